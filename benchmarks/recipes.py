"""Training recipes for the scripts' default: eps-DSM, EDM and flow matching, end to end.

    python -m benchmarks.recipes [--only REGEX] [--steps N] [--seeds 0,1]

Each recipe is the `demo` preset of `scripts/configs.py` (MLP 128x3, 3000 steps of batch 512,
Adam 1e-3, EMA 0.999 with warm-up, eight Gaussians) with its own process and loss, trained by
the scripts' own loop (`train.train`) and evaluated with the EMA parameters through
`common.sample` and `common.nll`: per sampler the energy distance to the 4000 held-out points
and the mean over modes of the per-mode std ratio (each sample assigned to its nearest mode,
its rms distance from that mode's mean against the true 0.1; 1 is right, below 1 too narrow),
and the held-out PF-ODE NLL (nats, exact divergence, Tsit5 at rtol = atol = 1e-4). Prints a
markdown table (not part of `make bench`; the chosen default is cited in RESULTS.md, 5b).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import sys
import tempfile
import time

import jax
import numpy as np

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)

import common  # noqa: E402
import configs  # noqa: E402
import train  # noqa: E402

from benchmarks.timing import table  # noqa: E402
from diffjax import metrics  # noqa: E402
from diffjax.data import EIGHT_GAUSSIANS_STD  # noqa: E402

# Every field a recipe may set, at the value a recipe gets unless it says otherwise (so that
# the rows do not depend on the defaults the measurement chooses).
NEUTRAL = dict(
    process="vp",
    loss="dsm",
    prediction="auto",
    weighting="auto",
    time_sampling="uniform",
    logit_mean=0.0,
    logit_std=1.0,
    sigma_data=0.5,
    p_mean=-1.2,
    p_std=1.2,
    time_scale=0.0,
    importance_sampling=False,
    lr=1e-3,
    lr_decay_steps=0,
)

RECIPES = {
    "eps-DSM, vp": dict(process="vp", loss="dsm", prediction="eps"),
    "EDM, edm, sigma_data 0.5, time_scale 1": dict(process="edm", loss="edm", time_scale=1.0),
    "EDM, edm, sigma_data 0.5, time_scale 25": dict(process="edm", loss="edm", time_scale=25.0),
    "EDM, edm, sigma_data 0.5, time_scale 250": dict(process="edm", loss="edm", time_scale=250.0),
    "EDM, edm, sigma_data 0.5, time_scale 1000": dict(process="edm", loss="edm", time_scale=1000.0),
    "EDM, edm, sigma_data 1.4, time_scale 250": dict(
        process="edm", loss="edm", sigma_data=1.4, time_scale=250.0
    ),
    "EDM, edm, sigma_data 0.5, P_mean -2, time_scale 25": dict(
        process="edm", loss="edm", time_scale=25.0, p_mean=-2.0
    ),
    "EDM, edm, sigma_data 0.5, P_mean -2, P_std 1.6, time_scale 25": dict(
        process="edm", loss="edm", time_scale=25.0, p_mean=-2.0, p_std=1.6
    ),
    "EDM, edm, sigma_data 0.5, time_scale 25, lr 3e-3 cosine to 0": dict(
        process="edm", loss="edm", time_scale=25.0, lr=3e-3, lr_decay_steps=3000
    ),
    "EDM, edm, sigma_data 0.5, time_scale 1, lr 3e-3 cosine to 0": dict(
        process="edm", loss="edm", time_scale=1.0, lr=3e-3, lr_decay_steps=3000
    ),
    "eps-DSM, vp, likelihood weighting, IS times": dict(
        process="vp", loss="dsm", prediction="eps", weighting="likelihood",
        importance_sampling=True,
    ),  # fmt: skip
    "FM, rectified_flow, uniform t": dict(process="rectified_flow", loss="flow_matching"),
    "FM, rectified_flow, logit-normal t (0, 1)": dict(
        process="rectified_flow", loss="flow_matching", time_sampling="logit_normal"
    ),
}

SAMPLERS = (("dpm_solver", 10), ("dpm_solver", 20), ("ode", 10), ("ode", 0))
"""`(sampler, num_steps)` of `common.sample`: DPM-Solver++ (2M), Heun on a fixed grid, and
the adaptive Tsit5 PF-ODE (`num_steps` 0)."""


def mode_std_ratio(x, means, std: float = EIGHT_GAUSSIANS_STD) -> float:
    """Mean over modes of `rms(x_k - mean_k) / std`, samples assigned to the nearest mean
    (`tests/helpers.py`'s `mode_stds`); a mode with no sample counts as 0."""
    x, means = np.asarray(x, np.float64), np.asarray(means, np.float64)
    nearest = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    ratios = [
        np.sqrt(np.mean((x[nearest == k] - means[k]) ** 2)) / std if np.any(nearest == k) else 0.0
        for k in range(means.shape[0])
    ]
    return float(np.mean(ratios))


def config_of(fields: dict, steps: int = 0, seed: int = 0) -> configs.Config:
    config = configs.Config(**configs.PRESETS["demo"])
    config = dataclasses.replace(config, **{**NEUTRAL, **fields}, seed=seed)
    return dataclasses.replace(config, steps=steps) if steps else config


def measure(config: configs.Config, nll_points: int) -> dict:
    """Train `config` with train.py's loop in a temporary directory, then sample and score."""
    run = common.build(config)
    ds = run.dataset
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        state, summary = train.train(run, workdir, resume=False)
        seconds = time.perf_counter() - start
    params = common.eval_params(run, state)
    means = ds.exact.means
    key = jax.random.key(config.seed + 100)
    row = {"loss": summary["last_loss"], "train_s": seconds, "samplers": {}}
    for i, (name, steps) in enumerate(SAMPLERS):
        x, info = common.sample(
            run, params, name, jax.random.fold_in(key, i), ds.x_heldout.shape[0], num_steps=steps
        )
        ed = float(metrics.energy_distance(x, ds.x_heldout))
        row["samplers"][(name, steps)] = (int(info["nfe"]), ed, mode_std_ratio(x, means))
    row["nll"] = common.nll(run, params, ds.x_heldout[:nll_points], jax.random.fold_in(key, 99))
    row["exact_nll"] = float(-np.mean(np.asarray(ds.exact.log_prob(ds.x_heldout[:nll_points]))))
    return row


def sampler_label(name: str, steps: int) -> str:
    if name == "ode":
        return "ode adaptive" if steps == 0 else f"Heun {steps}"
    return f"{name} {steps}"


def markdown(rows: dict, nll_points: int) -> str:
    header = ["recipe", "train loss", "train s"]
    header += [f"{sampler_label(*s)}: ED / std ratio (NFE)" for s in SAMPLERS]
    header += [f"PF-ODE NLL ({nll_points} pts)"]
    body = []
    for name, r in rows.items():
        cells = [name, f"{r['loss']:.4f}", f"{r['train_s']:.0f}"]
        for s in SAMPLERS:
            nfe, ed, ratio = r["samplers"][s]
            cells.append(f"{ed:.4f} / {ratio:.2f} ({nfe})")
        n = r["nll"]
        cells.append(f"{n['nll']:.3f} +- {n['nll_se']:.3f} ({n['nfe']:.0f})")
        body.append(cells)
    exact = next(iter(rows.values()))["exact_nll"]
    return table(header, body) + f"\n\nExact data NLL of the same held-out points: {exact:.3f}."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="regex: only the recipes whose name matches")
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: the preset's)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, one table each")
    parser.add_argument("--nll_points", type=int, default=2000)
    args = parser.parse_args()
    names = [name for name in RECIPES if re.search(args.only, name)]
    for seed in (int(s) for s in args.seeds.split(",")):
        load, rows = os.getloadavg(), {}
        for name in names:
            print(f"[{name}, seed {seed}]", file=sys.stderr, flush=True)
            rows[name] = measure(config_of(RECIPES[name], args.steps, seed), args.nll_points)
            print(markdown({name: rows[name]}, args.nll_points).splitlines()[2], flush=True)
        config = config_of({}, args.steps, seed)
        print(
            f"\n{datetime.date.today()}, {os.cpu_count()} CPU cores, load {load[0]:.1f} -> "
            f"{os.getloadavg()[0]:.1f}; MLP {config.hidden}, {config.steps} steps, batch "
            f"{config.batch_size}, lr {config.lr:g}, EMA {config.ema_decay:g} (warm-up), seed "
            f"{seed}, {config.num_heldout} samples per sampler\n"
        )
        print(markdown(rows, args.nll_points) + "\n", flush=True)


if __name__ == "__main__":
    main()
