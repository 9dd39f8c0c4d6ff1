"""Timing of the probability-flow ODE likelihood (`diffjax.likelihood.log_prob`).

Prints compile time, run time (best of `--repeats`) and NFE for:
  1. the NLL of 4096 2-D points of the 8-Gaussian mixture (`diffjax.data`'s: radius 2,
     std 0.1), exact score, exact vs Hutchinson;
  2. a `[256, 8, 8, 1]` image batch (exact score of a 10-component mixture), Hutchinson;
  3. the state layout: the whole batch as one diffrax state (what `log_prob` does) vs a
     `jax.vmap` of per-example solves, on 4096 2-D points and a digits-sized `[256, 64]` batch.

Run: `.venv/bin/python benchmarks/likelihood_timing.py [--n 4096] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import diffjax as dj
from diffjax.data import eight_gaussians_params
from diffjax.likelihood import log_prob


def random_mixture(key, event_shape, k: int = 10, std: float = 0.3) -> dj.GaussianMixture:
    means = jax.random.uniform(key, (k, *event_shape), minval=-1.0, maxval=1.0)
    return dj.GaussianMixture(jnp.full((k,), 1 / k), means, jnp.full((k,), std))


def timed(fn, *args, repeats: int) -> tuple[float, float, dict]:
    """(compile seconds, best run seconds, info) of `jax.jit(fn)(*args)`."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return compile_s, best, out


def report(name: str, compile_s: float, run_s: float, logp, info, dim: int) -> None:
    nll = -float(jnp.mean(logp)) / dim
    nfe = int(jnp.max(info["nfe"]))
    print(
        f"{name:<46s} compile {compile_s:6.2f} s  run {run_s:7.3f} s  nfe {nfe:5d}  "
        f"NLL {nll:.4f} nats/dim"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4096, help="2-D points")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"backend: {jax.default_backend()}, devices: {jax.devices()}")
    sde = dj.VPSDE()
    key = jax.random.key(0)
    k_data, k_img, k_mix, k_probe, k_dig = jax.random.split(key, 5)

    # 1. 8-Gaussians, exact score.
    dist = dj.GaussianMixture(*eight_gaussians_params())  # radius 2, std 0.1
    score_fn = dj.exact_score(dist, sde)
    x = dist.sample(k_data, args.n)
    exact_nll = -float(jnp.mean(dist.log_prob(x))) / 2
    print(f"8-Gaussians, {args.n} points; exact NLL of p_0: {exact_nll:.4f} nats/dim")
    for divergence in ("exact", "hutchinson"):
        fn = lambda x, div=divergence: log_prob(score_fn, sde, x, key=k_probe, divergence=div)
        c, r, (logp, info) = timed(fn, x, repeats=args.repeats)
        report(f"  batch state, {divergence}", c, r, logp, info, 2)

    # 2. [256, 8, 8, 1] images, Hutchinson.
    img_dist = random_mixture(k_mix, (8, 8, 1))
    img_score = dj.exact_score(img_dist, sde)
    xi = img_dist.sample(k_img, 256)
    fn = lambda x: log_prob(img_score, sde, x, key=k_probe, divergence="hutchinson")
    c, r, (logp, info) = timed(fn, xi, repeats=args.repeats)
    print(f"[256, 8, 8, 1] images; exact NLL {-float(jnp.mean(img_dist.log_prob(xi))) / 64:.4f}")
    report("  batch state, hutchinson", c, r, logp, info, 64)

    # 3. Layout: one batched state vs vmapped per-example solves.
    dig_dist = random_mixture(k_dig, (64,))
    cases = [
        ("2-D", score_fn, x, "exact"),
        ("[256, 64]", dj.exact_score(dig_dist, sde), dig_dist.sample(k_dig, 256), "hutchinson"),
    ]
    for name, fn_score, data, divergence in cases:
        batched = lambda x, s=fn_score, d=divergence: log_prob(s, sde, x, key=k_probe, divergence=d)

        def per_example(x, s=fn_score, d=divergence):
            keys = jax.random.split(k_probe, x.shape[0])
            one = lambda xi, k: jax.tree.map(
                lambda a: a[0] if a.ndim else a,
                log_prob(s, sde, xi[None], key=k, divergence=d),
            )
            return jax.vmap(one)(x, keys)

        dim = data.shape[1]
        c, r, (logp, info) = timed(batched, data, repeats=args.repeats)
        report(f"layout {name} {divergence}: batch state", c, r, logp, info, dim)
        c, r, (logp, info) = timed(per_example, data, repeats=args.repeats)
        report(f"layout {name} {divergence}: vmap per example", c, r, logp, info, dim)


if __name__ == "__main__":
    main()
