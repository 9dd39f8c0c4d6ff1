"""A normalizing flow on 8x8 digits (flowjax), as a user who wants likelihoods would pick instead.

    python -m benchmarks.flow_peer [--seconds 90] [--seeds 3]

The images, split and bits/dim convention are the scripts' (`scripts/common.py`, preset
`digits`): the held-out set is the first `eval_nll_points` (128) of its `num_heldout` (297)
held-out images, the rest train. Integers `0..16` are dequantized uniformly
(`likelihood.dequantize`, 17 levels, onto `Dataset.data_interval` = `[-1 - 1/16, 1 + 1/16)`),
and `likelihood.bits_per_dim` converts the density there to bits/dim with the same Jacobian as
diffjax's own `bits/dim`, so the numbers compare directly. The flow: flowjax's
`masked_autoregressive_flow` with a `RationalQuadraticSpline` transformer (~1.2M parameters),
Adam on the maximum-likelihood loss, training images freshly dequantized every step, for a
fixed wall-clock budget per seed. References on the same dequantized held-out images: one
full-covariance Gaussian and a 10-component scikit-learn `GaussianMixture` (full covariances),
both fitted to the dequantized training images.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.config import Config
from benchmarks.timing import table
from diffjax import likelihood

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
SECONDS, SEEDS = 90.0, 3  # training budget per seed (CPU), seeds
FLOW = dict(flow_layers=5, nn_width=128, knots=8, interval=4.0)  # ~1.2M parameters
BATCH, LR = 128, 1e-3
TITLE = "### 4c. A normalizing flow on 8x8 digits (flowjax)"


def digits_split():
    """`(train [N, 8, 8, 1], heldout [128, 8, 8, 1], levels, data_interval)` as the scripts
    build them for the `digits` preset (images in `[-1, 1]`)."""
    sys.path.insert(0, SCRIPTS)
    import common
    import configs

    config = configs.Config(**configs.PRESETS["digits"])
    ds = common.load_data(config)
    held = ds.x_heldout[: config.eval_nll_points]
    return np.asarray(ds.x_train), np.asarray(held), ds.levels, ds.data_interval


def _levels(x, levels: int):
    """Images in `[-1, 1]` -> integers `0..levels-1` (as `scripts/common.nll`)."""
    return jnp.round((jnp.asarray(x) + 1.0) * (levels - 1) / 2.0)


def make_flow(key, dim: int):
    """flowjax's masked autoregressive flow with rational-quadratic splines on `R^dim`."""
    from flowjax.bijections import RationalQuadraticSpline
    from flowjax.distributions import Normal
    from flowjax.flows import masked_autoregressive_flow

    return masked_autoregressive_flow(
        key,
        base_dist=Normal(jnp.zeros(dim)),
        transformer=RationalQuadraticSpline(knots=FLOW["knots"], interval=FLOW["interval"]),
        flow_layers=FLOW["flow_layers"],
        nn_width=FLOW["nn_width"],
    )


def num_params(tree) -> int:
    import equinox as eqx

    return sum(x.size for x in jax.tree.leaves(eqx.filter(tree, eqx.is_inexact_array)))


def train_flow(key, train_ints, levels, interval, seconds: float):
    """Adam on the flow's NLL for `seconds` of wall time; `(flow, steps, loss)`."""
    import equinox as eqx
    import optax
    import paramax
    from flowjax.train.losses import MaximumLikelihoodLoss
    from flowjax.train.train_utils import step

    key, k_init = jax.random.split(key)
    dim = train_ints[0].size
    flow = make_flow(k_init, dim)
    params, static = eqx.partition(
        flow, eqx.is_inexact_array, is_leaf=lambda leaf: isinstance(leaf, paramax.NonTrainable)
    )
    optimizer = optax.adam(LR)
    opt_state = optimizer.init(params)
    loss_fn = MaximumLikelihoodLoss()

    @jax.jit
    def batch(key):
        k_idx, k_deq = jax.random.split(key)
        idx = jax.random.randint(k_idx, (BATCH,), 0, train_ints.shape[0])
        x = likelihood.dequantize(k_deq, train_ints[idx], data_range=levels, data_interval=interval)
        return x.reshape(BATCH, dim)

    steps, start, loss = 0, time.perf_counter(), float("nan")
    while time.perf_counter() - start < seconds:
        key, k_batch = jax.random.split(key)
        params, opt_state, loss = step(
            params, static, batch(k_batch), optimizer=optimizer, opt_state=opt_state,
            loss_fn=loss_fn,
        )  # fmt: skip
        steps += 1
    return eqx.combine(params, static), steps, float(loss)


def gaussian_log_prob(train, x):
    """Log-density of `x` under the full-covariance Gaussian fitted (ML) to `train`."""
    from scipy.stats import multivariate_normal

    mean, cov = train.mean(0), np.cov(train, rowvar=False, bias=True)
    return multivariate_normal(mean, cov).logpdf(x)


def mixture_log_prob(train, x, seed: int):
    """Log-density of `x` under a 10-component full-covariance sklearn GaussianMixture."""
    from sklearn.mixture import GaussianMixture

    return GaussianMixture(10, covariance_type="full", random_state=seed).fit(train).score_samples(x)


def _bpd(logp, levels, interval):
    bpd = np.asarray(
        likelihood.bits_per_dim(jnp.asarray(logp), (8, 8, 1), data_range=levels, data_interval=interval)
    )
    return float(bpd.mean()), float(bpd.std() / math.sqrt(bpd.size))


def run(cfg: Config, compile_rows: list, seconds: float | None = None, seeds: int = SEEDS) -> str:
    try:
        import flowjax  # noqa: F401
    except ImportError:
        return (
            f"{TITLE}\n\nSkipped: flowjax is not installed (`make bench` installs the `bench` "
            "extra into `benchmarks/.venv-bench`)."
        )
    import equinox as eqx

    seconds = seconds if seconds is not None else (2.0 if cfg.quick else SECONDS)
    seeds = 1 if cfg.quick else seeds
    train, held, levels, interval = digits_split()
    train_ints, held_ints = _levels(train, levels), _levels(held, levels)
    rows, per_seed = [], {"flow": [], "gaussian": [], "mixture": []}
    n_params = 0
    for seed in range(seeds):
        print(f"  flow_peer: seed {seed}", flush=True)
        k_train, k_held, k_fit = jax.random.split(jax.random.key(seed), 3)
        deq = dict(data_range=levels, data_interval=interval)
        x_held = np.asarray(likelihood.dequantize(k_held, held_ints, **deq)).reshape(len(held), -1)
        x_fit = np.asarray(likelihood.dequantize(k_fit, train_ints, **deq)).reshape(len(train), -1)
        start = time.perf_counter()
        flow, steps, loss = train_flow(k_train, train_ints, levels, interval, seconds)
        elapsed = time.perf_counter() - start
        n_params = num_params(flow)
        results = {
            "flow": _bpd(eqx.filter_jit(flow.log_prob)(jnp.asarray(x_held)), levels, interval),
            "gaussian": _bpd(gaussian_log_prob(x_fit.astype(np.float64), x_held), levels, interval),
            "mixture": _bpd(mixture_log_prob(x_fit, x_held, seed), levels, interval),
        }
        for name, value in results.items():
            per_seed[name].append(value[0])
        rows.append(
            [seed, f"{steps} steps in {elapsed:.0f} s (final batch loss {loss:.1f} nats)"]
            + [f"{m:.3f} ± {se:.3f}" for m, se in results.values()]
        )
    summary = ["mean over seeds", "-"] + [
        f"{np.mean(v):.3f} (sd {np.std(v, ddof=1):.3f})" if len(v) > 1 else f"{v[0]:.3f}"
        for v in per_seed.values()
    ]
    header = ["seed", "flow training", "flow", "full-cov. Gaussian", "GaussianMixture(10)"]
    return "\n".join(
        [
            TITLE,
            "",
            f"flowjax {importlib.metadata.version('flowjax')}, "
            f"jax {jax.__version__}. `masked_autoregressive_flow` with "
            f"`RationalQuadraticSpline(knots={FLOW['knots']}, interval={FLOW['interval']})`, "
            f"{FLOW['flow_layers']} layers, width {FLOW['nn_width']}: {n_params:,} parameters; "
            f"Adam {LR}, batch {BATCH}, {seconds:.0f} s of wall-clock training per seed on this "
            f"machine's CPU. Held-out bits/dim (mean ± standard error over the scripts' "
            f"{len(held)} held-out images, {levels} levels, uniform dequantization onto "
            f"`[{interval[0]:.4f}, {interval[1]:.4f})`, the Jacobian of "
            "`likelihood.bits_per_dim`, as diffjax's `bits/dim`); Gaussian and mixture fitted "
            f"to the {len(train)} dequantized training images, same held-out draw per seed.",
            "",
            table(header, rows + [summary]),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=SECONDS, help="training per seed")
    parser.add_argument("--seeds", type=int, default=SEEDS)
    args = parser.parse_args()
    print(run(Config(), [], seconds=args.seconds, seeds=args.seeds))


if __name__ == "__main__":
    main()
