"""Digits training recipes, judged by held-out bits/dim next to the likelihood references.

    python -m benchmarks.digits_recipes [--only REGEX] [--steps N] [--seed S]
    python -m benchmarks.run --only digits_recipes [--digits-steps N]

Each recipe is the `digits` preset of `scripts/configs.py` with its own fields, trained by the
scripts' own loop (`train.train`) and evaluated with the EMA parameters on the scripts' first
128 held-out images (17 grey levels), every recipe the same two ways:

- uniform: `likelihood.dequantize` (noise uniform on the grey level's bin) and the PF-ODE from
  `t_eps = 1e-5`, the bound of the references (Gaussian, mixture, flow);
- truncated normal: `likelihood.truncated_normal_dequantize` at `t_eps = T_EPS_TN` (the
  process' own noise at `t_eps`, truncated to the bin; Zheng et al. 2023, arXiv:2305.03935).

Both are upper bounds on the discrete NLL of the same integer images, computed by
`common.nll` (Hutchinson, one Rademacher probe, Tsit5 at rtol = atol = 1e-4): bits/dim +-
its standard error over the images and the NFE. Training time is CPU time (user + sys of
this process, `resource.getrusage`) and wall time. Sample quality: 100 samples (ten per
digit, classifier-free guidance w = 3, DPM-Solver++ 20 steps) labelled by a clean classifier
trained on the same 1500 images (`benchmarks.digits_guidance`); the fraction labelled as the
requested digit.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import resource
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)

import common  # noqa: E402
import configs  # noqa: E402
import train  # noqa: E402

from benchmarks import digits_guidance  # noqa: E402
from benchmarks.timing import table  # noqa: E402
from diffjax import nets  # noqa: E402

NUM_IMAGES = 128  # the scripts' held-out images of the likelihood (`eval_nll_points`)
T_EPS_UNIFORM = 1e-5
T_EPS_TN = 4.4e-3  # VP: sigma = 0.025, the bin's half-width 1/16 is 2.5 sigma

# Fields a recipe may set, at the old preset's value unless the recipe says otherwise (the
# preset may change; the rows must not).
NEUTRAL = dict(
    process="vp",
    loss="dsm",
    prediction="eps",
    weighting="simple",
    importance_sampling=False,
    train_t_eps=1e-5,
    dequantize=True,
    label_dropout=0.1,
    channels=16,
    lr=1e-3,
    steps=3000,
    lr_decay_steps=3000,
    checkpoint_every=1000,
)

_LIKELIHOOD = dict(
    weighting="likelihood", importance_sampling=True, train_t_eps=T_EPS_TN, dequantize=False
)
_LONGER = dict(lr=2e-3, steps=4000, lr_decay_steps=4000)

RECIPES = {
    "eps-DSM, simple weighting, uniform dequantization (the old preset)": {},
    "likelihood weighting, IS times on [4.4e-3, 1], no dequantization": _LIKELIHOOD,
    "the same, label dropout 0.5": {**_LIKELIHOOD, "label_dropout": 0.5},
    "the same, lr 2e-3, 4000 steps, label dropout 0.1": {**_LIKELIHOOD, **_LONGER},
    "the same, lr 2e-3, 4000 steps, label dropout 0.5": {
        **_LIKELIHOOD,
        **_LONGER,
        "label_dropout": 0.5,
    },
    "the same at lr 4e-3": {**_LIKELIHOOD, **_LONGER, "label_dropout": 0.5, "lr": 4e-3},
    "lr 4e-3, label dropout 0.5, trained on [6.1e-3, 1] (the preset)": {
        **_LIKELIHOOD,
        **_LONGER,
        "label_dropout": 0.5,
        "lr": 4e-3,
        "train_t_eps": 6.1e-3,
    },
}

REFERENCES = (
    ("full-covariance Gaussian (section 4c)", "2.927 +- 0.022"),
    ("10-component Gaussian mixture (section 4c)", "2.873 +- 0.072"),
    ("flowjax masked autoregressive spline flow, 90 s (section 4c)", "2.053 +- 0.026"),
)
"""Held-out bits/dim of the references on the same 128 images (uniform dequantization), as
`benchmarks/flow_peer.py` measured them (seed 0; the flow's mean over three seeds is 2.052)."""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def config_of(fields: dict, steps: int = 0, seed: int = 0) -> configs.Config:
    config = configs.Config(**configs.PRESETS["digits"])
    config = dataclasses.replace(config, **{**NEUTRAL, **fields}, seed=seed)
    if steps:
        config = dataclasses.replace(config, steps=steps, lr_decay_steps=steps)
    return config


def classifier(run: common.Run, steps: int = 1500):
    """A clean classifier `images -> labels` trained on the run's training images (the
    network and loop of `benchmarks.digits_guidance`); its held-out accuracy."""
    ds = run.dataset
    apply, params = nets.split(
        nets.Classifier((8, 8, 1), ds.num_classes, hidden=(32, 64), rngs=nnx.Rngs(1))
    )
    x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)

    def loss(p, _, key):
        idx = jax.random.randint(key, (128,), 0, x.shape[0])
        logits = apply(p, x[idx], jnp.zeros(128))
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y[idx])), {}

    params = digits_guidance.train(loss, params, jax.random.key(7), steps, 2e-3, None, steps)

    @jax.jit
    def classify(images):
        return jnp.argmax(apply(params, images, jnp.zeros(images.shape[0])), axis=-1)

    accuracy = float(jnp.mean(classify(jnp.asarray(ds.x_heldout)) == jnp.asarray(ds.y_heldout)))
    return classify, accuracy


def measure(config: configs.Config, classify) -> dict:
    """Train `config` with train.py's loop in a temporary directory, then score it."""
    run = common.build(config)
    ds = run.dataset
    with tempfile.TemporaryDirectory() as workdir:
        cpu, wall = cpu_seconds(), time.perf_counter()
        state, summary = train.train(run, workdir, resume=False)
        cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
    params = common.eval_params(run, state)
    key = jax.random.key(config.seed + 100)
    x = ds.x_heldout[:NUM_IMAGES]
    row = {"train_cpu": cpu, "train_wall": wall, "loss": summary["last_loss"]}
    row["uniform"] = common.nll(
        run, params, x, key, dequantization="uniform", t_eps=T_EPS_UNIFORM
    )
    row["truncated_normal"] = common.nll(
        run, params, x, key, dequantization="truncated_normal", t_eps=T_EPS_TN
    )
    if config.train_t_eps > T_EPS_TN:  # also the bound at the recipe's own (wider) t_eps
        row["truncated_normal_own"] = common.nll(
            run, params, x, key, dequantization="truncated_normal", t_eps=config.train_t_eps
        )
    print({k: v for k, v in row.items()}, file=sys.stderr, flush=True)
    labels = common.labels_for(run, "all", 100)
    samples, _ = common.sample(
        run, params, "dpm_solver", jax.random.fold_in(key, 1), 100, labels=labels, weight=3.0
    )
    row["accuracy"] = float(np.mean(np.asarray(classify(np.clip(samples, -1, 1))) == labels))
    return row


def markdown(rows: dict) -> str:
    header = ["recipe", "training CPU s (wall s)", "uniform, t_eps 1e-5: bits/dim (NFE)"]
    header += [f"truncated normal, t_eps {T_EPS_TN:g}: bits/dim (NFE)", "guided samples right"]
    body = []
    for name, r in rows.items():
        cells = [name, f"{r['train_cpu']:.0f} ({r['train_wall']:.0f})"]
        for kind in ("uniform", "truncated_normal"):
            n = r[kind]
            cells.append(f"{n['bpd']:.3f} +- {n['bpd_se']:.3f} ({n['nfe']:.0f})")
        if "truncated_normal_own" in r:
            n = r["truncated_normal_own"]
            cells[-1] += f"; at its own t_eps: {n['bpd']:.3f} +- {n['bpd_se']:.3f} ({n['nfe']:.0f})"
        cells.append(f"{r['accuracy']:.2f}")
        body.append(cells)
    for name, bpd in REFERENCES:
        body.append([f"reference: {name}", "", bpd, "", ""])
    return table(header, body)


def compare(steps: int = 0, only: str = "", seed: int = 0) -> str:
    """The table of every recipe matching `only`, with a line on the setting and the load."""
    load = os.getloadavg()
    names = [name for name in RECIPES if re.search(only, name)]
    classify, accuracy = classifier(common.build(config_of({}, steps, seed)))
    rows = {}
    for name in names:
        print(f"[{name}]", file=sys.stderr, flush=True)
        rows[name] = measure(config_of(RECIPES[name], steps, seed), classify)
        print(markdown({name: rows[name]}).splitlines()[2], flush=True)
    config = config_of({}, steps, seed)
    return (
        f"{datetime.date.today()}, {os.cpu_count()} CPU cores, load {load[0]:.1f} -> "
        f"{os.getloadavg()[0]:.1f}; U-Net {config.channels} channels, batch "
        f"{config.batch_size}, {config.steps} steps unless the recipe says otherwise, seed "
        f"{seed}; clean classifier {accuracy:.3f} on the 297 held-out images.\n\n"
        + markdown(rows)
    )


def run(cfg, compile_rows: list) -> str:
    """The `benchmarks.run` group: every recipe at `cfg.digits_steps` steps (0: their own)."""
    del compile_rows
    return "\n".join(
        [
            "#### Digits recipes against the references (held-out bits/dim)",
            "",
            "`python -m benchmarks.digits_recipes`; "
            + __doc__.split("\n\n", 2)[2].replace("\n", " "),
            "",
            compare(steps=cfg.digits_steps),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="regex: only the recipes whose name matches")
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(compare(args.steps, args.only, args.seed))


if __name__ == "__main__":
    main()
