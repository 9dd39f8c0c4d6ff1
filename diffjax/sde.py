"""Forward SDEs `dx = f(x, t) dt + g(t) dW` on `t in [0, T]` (notes, topic 3).

Song et al. 2021, "Score-Based Generative Modeling through Stochastic Differential Equations"
(arXiv:2011.13456): the variance-preserving (VP), sub-VP and variance-exploding (VE) SDEs, each
with a closed-form Gaussian marginal `x_t = mean_coeff(t) x_0 + std(t) eps`. Given a score
`s(x, t) ~ grad log p_t(x)`, the reverse-time SDE has drift `f - g^2 s` and the
probability-flow ODE has drift `f - g^2 s / 2`; both are integrated from `T` down to `t_eps`.

Shapes: `x` is `[B, *event]`; `t` is a scalar or `[B]`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from diffjax._core import (
    AbstractForwardProcess,
    as_float_array,
    check_batch_time,
    check_positive_int,
    concrete,
    expand_to,
)
from diffjax.schedules import DiscreteSchedule, linear

__all__ = ["AbstractSDE", "SubVPSDE", "VESDE", "VPSDE"]


def _check_scalar(value, name: str, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a float, got {type(value).__name__}.")
    if not np.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"`{name}` must be a positive finite float, got {value}.")
    return float(value)


class AbstractSDE(AbstractForwardProcess):
    """A forward SDE with Gaussian marginals; `T` is its end time."""

    T: eqx.AbstractVar[float]

    @abc.abstractmethod
    def drift(self, x: ArrayLike, t: ArrayLike) -> Array:
        """`f(x, t)`: `[B, *event] -> [B, *event]`."""

    @abc.abstractmethod
    def diffusion(self, t: ArrayLike) -> Array:
        """`g(t)`, same shape as `t`."""

    def check_time(self, t: ArrayLike, name: str = "t") -> Array:
        """`t` must be a real time in `[0, T]` (range checked when concrete)."""
        t = as_float_array(t, name)
        value = concrete(t)
        if value is not None and value.size:
            lo, hi = float(value.min()), float(value.max())
            if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > self.T * (1 + 1e-6):
                raise ValueError(f"`{name}` must lie in [0, T] = [0, {self.T}], got [{lo}, {hi}].")
        return t

    def _check_xt(self, x: ArrayLike, t: ArrayLike) -> tuple[Array, Array]:
        x = as_float_array(x, "x")
        t = self.check_time(t)
        check_batch_time(x, t)
        return x, t

    def log_snr(self, t: ArrayLike) -> Array:
        """`lambda(t) = log(mean_coeff(t) / std(t))`, the half log signal-to-noise ratio."""
        mean_coeff, std = self.marginal(t)
        return jnp.log(mean_coeff) - jnp.log(std)

    def reverse_drift(self, score_fn: Callable, x: ArrayLike, t: ArrayLike, *args) -> Array:
        """Drift of the reverse-time SDE, `f(x, t) - g(t)^2 s(x, t)` (run with `dt < 0`)."""
        x, t = self._check_xt(x, t)
        g2 = expand_to(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - g2 * score_fn(x, jnp.broadcast_to(t, x.shape[:1]), *args)

    def probability_flow_drift(
        self, score_fn: Callable, x: ArrayLike, t: ArrayLike, *args
    ) -> Array:
        """Drift of the probability-flow ODE, `f(x, t) - g(t)^2 s(x, t) / 2`."""
        x, t = self._check_xt(x, t)
        g2 = expand_to(self.diffusion(t) ** 2, x)
        return self.drift(x, t) - 0.5 * g2 * score_fn(x, jnp.broadcast_to(t, x.shape[:1]), *args)


class _AbstractVPFamily(AbstractSDE):
    """Shared parts of VP and sub-VP: `beta(t) = beta_min + t (beta_max - beta_min)`."""

    beta_min: Array
    beta_max: Array
    T: float = eqx.field(static=True)

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0):
        beta_min = _check_scalar(beta_min, "beta_min")
        beta_max = _check_scalar(beta_max, "beta_max")
        if beta_min > beta_max:
            raise ValueError(f"`beta_min` ({beta_min}) must not exceed `beta_max` ({beta_max}).")
        self.T = _check_scalar(T, "T")
        self.beta_min = jnp.asarray(beta_min)
        self.beta_max = jnp.asarray(beta_max)

    def beta(self, t: ArrayLike) -> Array:
        """`beta(t) = beta_min + t / T (beta_max - beta_min)`."""
        t = self.check_time(t)
        return self.beta_min + t / self.T * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: ArrayLike) -> Array:
        """`log mean_coeff(t) = -1/2 int_0^t beta(s) ds`."""
        t = self.check_time(t)
        return -0.25 * t**2 / self.T * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift(self, x: ArrayLike, t: ArrayLike) -> Array:
        """`f(x, t) = -beta(t) x / 2`."""
        x, t = self._check_xt(x, t)
        return -0.5 * expand_to(self.beta(t), x) * x


class VPSDE(_AbstractVPFamily):
    """Variance-preserving SDE `dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW`.

    The continuous limit of the DDPM chain with `beta_t = beta(t) dt` (notes, topic 3):
    `mean_coeff(t) = exp(-1/2 int_0^t beta)`, `std(t)^2 = 1 - mean_coeff(t)^2`; prior `N(0, I)`.
    """

    @property
    def prior_std(self) -> float:
        return 1.0

    def diffusion(self, t: ArrayLike) -> Array:
        return jnp.sqrt(self.beta(t))

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        lmc = self.log_mean_coeff(t)
        return jnp.exp(lmc), jnp.sqrt(-jnp.expm1(2.0 * lmc))

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Inverse of `log_snr`: the time `t` with `log(mean_coeff(t) / std(t)) = log_snr`."""
        lam = as_float_array(log_snr, "log_snr")
        neg_lmc = 0.5 * jnp.logaddexp(0.0, -2.0 * lam)  # -log mean_coeff, >= 0
        delta = (self.beta_max - self.beta_min) / self.T
        return (
            2.0
            * neg_lmc
            / (0.5 * self.beta_min + jnp.sqrt(0.25 * self.beta_min**2 + delta * neg_lmc))
        )

    @classmethod
    def from_ddpm(cls, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> VPSDE:
        """The VP SDE whose Euler discretisation with `dt = 1/N` is the linear DDPM schedule.

        The notes' link `beta_t = beta(t) dt`: `beta_min = N beta_start`, `beta_max = N beta_end`.
        Step `i` of the chain corresponds to time `t = i / N`.
        """
        num_steps = check_positive_int(num_steps, "num_steps")
        return cls(beta_min=num_steps * beta_start, beta_max=num_steps * beta_end)

    def to_ddpm(self, num_steps: int) -> DiscreteSchedule:
        """The linear DDPM schedule with `N` steps and `beta_i = beta(t_i) / N` (inverse of `from_ddpm`)."""
        num_steps = check_positive_int(num_steps, "num_steps")
        scale = self.T / num_steps
        if float(self.beta_max) * scale >= 1.0:
            raise ValueError(
                f"`num_steps` must exceed beta_max * T = {float(self.beta_max) * self.T:g} so that "
                f"every beta_i = beta(t_i) T / N lies in (0, 1); got {num_steps}."
            )
        return linear(num_steps, float(self.beta_min) * scale, float(self.beta_max) * scale)


class SubVPSDE(_AbstractVPFamily):
    """Sub-VP SDE `dx = -beta(t) x / 2 dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dW`.

    `mean_coeff(t) = exp(-1/2 int_0^t beta)`, `std(t) = 1 - mean_coeff(t)^2`; prior `N(0, I)`.
    """

    @property
    def prior_std(self) -> float:
        return 1.0

    def diffusion(self, t: ArrayLike) -> Array:
        discount = -jnp.expm1(4.0 * self.log_mean_coeff(t))
        return jnp.sqrt(self.beta(t) * discount)

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        lmc = self.log_mean_coeff(t)
        return jnp.exp(lmc), -jnp.expm1(2.0 * lmc)


class VESDE(AbstractSDE):
    """Variance-exploding SDE `dx = sqrt(d sigma(t)^2 / dt) dW`, `sigma(t) = s_min (s_max/s_min)^(t/T)`.

    `mean_coeff = 1`, `std(t) = sqrt(sigma(t)^2 - sigma_min^2)` (exact, starting at `x_0`);
    prior `N(0, sigma_max^2 I)`.
    """

    sigma_min: Array
    sigma_max: Array
    T: float = eqx.field(static=True)

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0):
        sigma_min = _check_scalar(sigma_min, "sigma_min")
        sigma_max = _check_scalar(sigma_max, "sigma_max")
        if sigma_min >= sigma_max:
            raise ValueError(
                f"`sigma_min` ({sigma_min}) must be smaller than `sigma_max` ({sigma_max})."
            )
        self.T = _check_scalar(T, "T")
        self.sigma_min = jnp.asarray(sigma_min)
        self.sigma_max = jnp.asarray(sigma_max)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def sigma(self, t: ArrayLike) -> Array:
        """`sigma(t) = sigma_min (sigma_max / sigma_min)^(t / T)`."""
        t = self.check_time(t)
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** (t / self.T)

    def drift(self, x: ArrayLike, t: ArrayLike) -> Array:
        x, _ = self._check_xt(x, t)
        return jnp.zeros_like(x)

    def diffusion(self, t: ArrayLike) -> Array:
        """`g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min) / T)`."""
        log_ratio = jnp.log(self.sigma_max / self.sigma_min)
        return self.sigma(t) * jnp.sqrt(2.0 * log_ratio / self.T)

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        t = self.check_time(t)
        # sigma(t)^2 - sigma_min^2 = sigma_min^2 expm1(2 (t/T) log(sigma_max/sigma_min)), >= 0.
        log_ratio = jnp.log(self.sigma_max / self.sigma_min)
        std = self.sigma_min * jnp.sqrt(jnp.expm1(2.0 * t / self.T * log_ratio))
        return jnp.ones_like(std), std
