"""Sample-quality metrics between two sample sets `x: [N, *event]` and `y: [M, *event]`.

All are two-sample statistics with known estimators; events are flattened to vectors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from diffjax._checks import as_float_array, check_key, check_knob, check_positive_int

__all__ = ["energy_distance", "mmd", "sliced_wasserstein"]


def _flatten_pair(x: ArrayLike, y: ArrayLike) -> tuple[Array, Array]:
    x = as_float_array(x, "x")
    y = as_float_array(y, "y")
    if x.ndim < 1 or y.ndim < 1 or x.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"`x` and `y` must have shapes [N, *event] and [M, *event] with the same event; "
            f"got {x.shape} and {y.shape}."
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("`x` and `y` need at least two samples each.")
    return x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)


def _pairwise_sum(a: Array, b: Array, kernel, block: int = 256) -> Array:
    """`sum_{i,j} kernel(a_i - b_j)`, computed in row blocks so memory stays `O(block * M * D)`."""
    n = a.shape[0]
    pad = (-n) % block
    a_pad = jnp.concatenate([a, jnp.zeros((pad, a.shape[1]), a.dtype)])
    valid = jnp.arange(n + pad) < n

    def row_block(args):
        rows, mask = args
        vals = kernel(rows[:, None, :] - b[None, :, :])
        return jnp.sum(jnp.where(mask[:, None], vals, 0.0))

    blocks = (a_pad.reshape(-1, block, a.shape[1]), valid.reshape(-1, block))
    return jnp.sum(jax.lax.map(row_block, blocks))


def _norm(diff: Array) -> Array:
    # Exact differences (no Gram-matrix cancellation); sqrt is safe at 0 in the forward pass.
    return jnp.sqrt(jnp.sum(diff**2, axis=-1))


def energy_distance(x: ArrayLike, y: ArrayLike) -> Array:
    """Unbiased squared energy distance `2 E|X - Y| - E|X - X'| - E|Y - Y'|`.

    Székely & Rizzo 2013; the within-sample terms are U-statistics (diagonal excluded), so the
    estimate is unbiased and zero in expectation when `x` and `y` share a distribution.
    """
    return _energy_distance(*_flatten_pair(x, y))


@jax.jit
def _energy_distance(x: Array, y: Array) -> Array:
    n, m = x.shape[0], y.shape[0]
    xy = _pairwise_sum(x, y, _norm) / (n * m)
    xx = _pairwise_sum(x, x, _norm) / (n * (n - 1))
    yy = _pairwise_sum(y, y, _norm) / (m * (m - 1))
    return 2.0 * xy - xx - yy


def mmd(x: ArrayLike, y: ArrayLike, bandwidth: ArrayLike = 1.0) -> Array:
    """Unbiased squared maximum mean discrepancy with a Gaussian kernel `exp(-|d|^2 / (2 h^2))`."""
    x, y = _flatten_pair(x, y)
    bandwidth = check_knob(bandwidth, "bandwidth", 0.0, strict=True)
    n, m = x.shape[0], y.shape[0]

    def kernel(diff):
        return jnp.exp(-jnp.sum(diff**2, axis=-1) / (2.0 * bandwidth**2))

    kxx = (_pairwise_sum(x, x, kernel) - n) / (n * (n - 1))
    kyy = (_pairwise_sum(y, y, kernel) - m) / (m * (m - 1))
    return kxx + kyy - 2.0 * _pairwise_sum(x, y, kernel) / (n * m)


def sliced_wasserstein(key, x: ArrayLike, y: ArrayLike, num_projections: int = 128) -> Array:
    """Sliced 2-Wasserstein distance over random unit directions (equal sample sizes)."""
    key = check_key(key)
    num_projections = check_positive_int(num_projections, "num_projections")
    x, y = _flatten_pair(x, y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` and `y` must have equal sizes, got {x.shape[0]} and {y.shape[0]}.")
    dirs = jax.random.normal(key, (x.shape[1], num_projections))
    dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)
    px, py = jnp.sort(x @ dirs, axis=0), jnp.sort(y @ dirs, axis=0)
    return jnp.sqrt(jnp.mean((px - py) ** 2))
