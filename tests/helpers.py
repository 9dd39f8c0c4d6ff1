"""Shared test helpers: distribution checks against exact mixtures."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj
from diffjax.metrics import energy_distance

# The six continuous paths, for the tests that run on every one.
CONTINUOUS_PROCESSES = {
    "vp": dj.VPSDE(),
    "subvp": dj.SubVPSDE(),
    "ve": dj.VESDE(sigma_min=0.01, sigma_max=50.0),
    "edm": dj.EDM(),
    "rf": dj.RectifiedFlow(),
    "cosine": dj.Cosine(),
}


@contextlib.contextmanager
def optimizations(enabled: bool):
    """XLA's optimisation passes on or off inside the block (the session runs with most of them
    off: see conftest), restoring the previous setting after it."""
    previous = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", not enabled)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", previous)


def mode_stds(x, gmm) -> np.ndarray:
    """Per-component std of samples `x: [N, *event]`, each assigned to its nearest mean: `[K]`.

    For well-separated isotropic modes (std `s`, `n` samples each in `D` dimensions) the
    estimate's relative standard error is about `1 / sqrt(2 n D)`.
    """
    flat = np.asarray(x).reshape(x.shape[0], -1)
    means = np.asarray(gmm.means).reshape(gmm.num_components, -1)
    nearest = np.argmin(((flat[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    return np.array(
        [np.sqrt(np.mean((flat[nearest == k] - means[k]) ** 2)) for k in range(len(means))]
    )


def assert_matches_mixture(x, gmm, ref, *, tol=0.003, std_tol=0.05, mode_tol=0.15):
    """Energy distance to `ref` below `tol`, and the per-mode stds: their mean within `std_tol`
    (relative) of the truth and every mode within `mode_tol` (about 5 standard errors for 500
    samples per mode in 2-D). Energy distance alone misses modes 30% too narrow."""
    ed = float(energy_distance(jnp.reshape(x, (x.shape[0], -1)), jnp.reshape(ref, (ref.shape[0], -1))))
    assert ed < tol, f"energy distance {ed:.4f} >= {tol}"
    truth = np.sqrt(np.mean(np.asarray(gmm.stds).reshape(gmm.num_components, -1) ** 2, axis=1))
    ratio = mode_stds(x, gmm) / truth
    assert abs(ratio.mean() - 1) < std_tol, f"per-mode std ratio {ratio.mean():.3f} (modes {ratio.round(3)})"
    assert np.all(np.abs(ratio - 1) < mode_tol), f"per-mode std ratios {ratio.round(3)}"
