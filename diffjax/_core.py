"""Shared private helpers: the forward-process interface, argument checks, broadcasting.

Everything here is an implementation detail; the public names are re-exported from the
topical modules (`diffjax.forward.AbstractForwardProcess`).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

LOG_2PI = math.log(2.0 * math.pi)


def is_concrete(x) -> bool:
    """True when `x` holds values now (not a tracer inside `jit`/`vmap`/`grad`)."""
    return not isinstance(x, jax.core.Tracer)


def concrete(x) -> np.ndarray | None:
    """The value of `x` as a NumPy array when it is known now, else `None` (a tracer).

    Checks on values go through NumPy: inside `jit`, `jnp` ops on constants are staged too.
    """
    return np.asarray(x) if is_concrete(x) else None


def as_float_array(x, name: str) -> Array:
    """`x` as a floating JAX array; integers are promoted, other dtypes raise `TypeError`."""
    arr = jnp.asarray(x)
    if jnp.issubdtype(arr.dtype, jnp.complexfloating) or arr.dtype == jnp.bool_:
        raise TypeError(f"`{name}` must be a real array, got dtype {arr.dtype}.")
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(jnp.result_type(float))
    return arr


def check_key(key, name: str = "key") -> Array:
    """Accept a typed key (`jax.random.key`) or a legacy uint32[2] `PRNGKey`; raise otherwise."""
    if key is None:
        raise TypeError(f"`{name}` must be a JAX PRNG key, got None.")
    arr = key if isinstance(key, jax.Array) else None
    if arr is None:
        raise TypeError(f"`{name}` must be a JAX PRNG key, got {type(key).__name__}.")
    if jnp.issubdtype(arr.dtype, jax.dtypes.prng_key):
        if arr.shape != ():
            raise ValueError(
                f"`{name}` must be a single key, got a key array of shape {arr.shape}."
            )
        return arr
    if arr.dtype == jnp.uint32 and arr.shape == (2,):
        return arr
    raise TypeError(
        f"`{name}` must be a JAX PRNG key (jax.random.key or PRNGKey), "
        f"got an array of dtype {arr.dtype} and shape {arr.shape}."
    )


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if value <= 0:
        raise ValueError(f"`{name}` must be positive, got {value}.")
    return int(value)


def check_batch_time(x: Array, t: Array, name_x: str = "x", name_t: str = "t") -> None:
    """`t` must be a scalar or have shape `[B]` with `B = x.shape[0]`."""
    if x.ndim < 1:
        raise ValueError(f"`{name_x}` must have a batch axis: shape [B, *event], got {x.shape}.")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(
            f"`{name_t}` must be a scalar or have shape [B] = [{x.shape[0]}] "
            f"matching `{name_x}` of shape {x.shape}; got {t.shape}."
        )


def expand_to(coeff: Array, x: Array) -> Array:
    """Reshape a per-example coefficient `[B]` (or scalar) so it broadcasts against `[B, *event]`."""
    coeff = jnp.asarray(coeff)
    if coeff.ndim == 0:
        return coeff
    return coeff.reshape(coeff.shape + (1,) * (x.ndim - coeff.ndim))


def sum_event(x: Array, num_batch_dims: int = 1) -> Array:
    """Sum over every axis after the first `num_batch_dims`."""
    return jnp.sum(x, axis=tuple(range(num_batch_dims, x.ndim)))


def standard_normal_log_prob(z: Array, std: ArrayLike = 1.0) -> Array:
    """log N(z | 0, std^2 I) summed over the event axes: `[B, *event] -> [B]`."""
    dim = math.prod(z.shape[1:])
    std = jnp.asarray(std, z.dtype)
    return -0.5 * sum_event((z / std) ** 2) - dim * (jnp.log(std) + 0.5 * LOG_2PI)


class ModelFunction(eqx.Module):
    """A model function `fn(x, t, ...)` as a pytree: its arrays are leaves, so a compiled sampler
    taking it is reused when only those arrays change (a guidance weight, a process' parameters).

    Hashed and compared by identity, like a closure, so that `jax.jit(fn)` also works (its
    arrays are then compile-time constants).
    """

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other


class AbstractForwardProcess(eqx.Module):
    """A forward noising process with Gaussian marginals `x_t = mean_coeff(t) x_0 + std(t) eps`.

    Implemented by the discrete schedules (`t` an integer step) and the continuous SDEs
    (`t` a time in `[0, T]`); `forward`, `distributions` and the samplers only use this
    interface.
    """

    @abc.abstractmethod
    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        """`(mean_coeff(t), std(t))` of `q(x_t | x_0) = N(mean_coeff x_0, std^2 I)`; shapes of `t`."""

    @abc.abstractmethod
    def check_time(self, t: ArrayLike, name: str = "t") -> Array:
        """Validate `t` (dtype, and range when concrete) and return it as an array."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior `p_T`."""

    def prior_sample(self, key, shape) -> Array:
        """Draw `x_T ~ N(0, prior_std^2 I)` of the given full shape `[B, *event]`."""
        key = check_key(key)
        return self.prior_std * jax.random.normal(key, tuple(shape))

    def prior_log_prob(self, z: ArrayLike) -> Array:
        """`log N(z | 0, prior_std^2 I)` per example: `[B, *event] -> [B]`."""
        z = as_float_array(z, "z")
        if z.ndim < 1:
            raise ValueError(f"`z` must have shape [B, *event], got {z.shape}.")
        return standard_normal_log_prob(z, self.prior_std)
