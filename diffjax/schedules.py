"""Discrete DDPM noise schedules (notes, topic 2).

The forward chain is `q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)` for
`t = 1..T`; with `alpha_bar(t) = prod_{s <= t} (1 - beta_s)` (the notes write `alpha_t` for this
cumulative product) the marginal is `q(x_t | x_0) = N(sqrt(alpha_bar(t)) x_0, (1 - alpha_bar(t)) I)`
and `alpha_bar(0) = 1`. Time `t` is an integer step in `0..T`.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from diffjax._checks import as_real_array, check_knob, check_positive_int, concrete
from diffjax._typing import Values
from diffjax.processes import AbstractMarginal

__all__ = ["DiscreteSchedule", "constant", "cosine", "from_betas", "linear"]


class DiscreteSchedule(AbstractMarginal):
    """A DDPM schedule: `betas[t-1] = beta_t` for `t = 1..T`, everything else precomputed.

    The same marginal interface as the continuous processes (`marginal`, `log_snr`, the prior),
    with integer `t`. All tables are indexed by the step `t` directly and have length `T + 1`; entry 0 of the
    per-step tables (`beta`, posterior coefficients) is a placeholder that is never used.

    Attributes:
        betas: `[T]`, `beta_t` in `(0, 1)`.
        alpha_bars: `[T + 1]`, `alpha_bar(t)`, with `alpha_bars[0] = 1`.
        posterior_variance: `[T + 1]`, `beta~_t = (1 - alpha_bar(t-1)) / (1 - alpha_bar(t)) beta_t`.
        posterior_mean_coef_x0, posterior_mean_coef_xt: `[T + 1]`, the coefficients of
            `mu(x_0, x_t) = sqrt(alpha_bar(t-1)) beta_t / (1 - alpha_bar(t)) x_0
                           + sqrt(1 - beta_t) (1 - alpha_bar(t-1)) / (1 - alpha_bar(t)) x_t`.
    """

    betas: Array
    alpha_bars: Array
    posterior_variance: Array
    posterior_mean_coef_x0: Array
    posterior_mean_coef_xt: Array

    def __init__(self, betas: Values):
        betas_np = as_real_array(betas, "betas", np).astype(np.float64)
        if betas_np.ndim != 1 or betas_np.size == 0:
            raise ValueError(f"`betas` must be a non-empty 1-D array, got shape {betas_np.shape}.")
        # Precompute in float64 on the host, store in the default float dtype (bad `betas`
        # make NaNs here, refused by `__check_init__`).
        with np.errstate(invalid="ignore", divide="ignore"):
            alpha_bars = np.concatenate([[1.0], np.cumprod(1.0 - betas_np)])
            beta_t = np.concatenate([[0.0], betas_np])
            ab_prev = np.concatenate([[1.0], alpha_bars[:-1]])
            one_minus_ab = np.where(np.arange(alpha_bars.size) == 0, 1.0, 1.0 - alpha_bars)
            dtype = jnp.result_type(float)
            self.betas = jnp.asarray(betas_np, dtype)
            self.alpha_bars = jnp.asarray(alpha_bars, dtype)
            self.posterior_variance = jnp.asarray((1.0 - ab_prev) / one_minus_ab * beta_t, dtype)
            self.posterior_mean_coef_x0 = jnp.asarray(np.sqrt(ab_prev) * beta_t / one_minus_ab, dtype)
            self.posterior_mean_coef_xt = jnp.asarray(
                np.sqrt(1.0 - beta_t) * (1.0 - ab_prev) / one_minus_ab, dtype
            )

    def __check_init__(self):
        b = np.asarray(self.betas)
        if not np.all(np.isfinite(b)) or np.any(b <= 0) or np.any(b >= 1):
            raise ValueError(f"`betas` must lie in (0, 1); got min {b.min()}, max {b.max()}.")

    @property
    def num_steps(self) -> int:
        """`T`, the number of noising steps."""
        return self.betas.shape[0]

    @property
    def prior_std(self) -> float:
        return 1.0

    def check_time(
        self, t: ArrayLike, name: str = "t", *, low: int = 0, traced: bool = True
    ) -> Array:
        """`t` must be integer steps in `low..T` (`low = 1` for the posterior).

        A concrete `t` is checked now (`ValueError`); a traced one by `eqx.error_if` at run time
        when `traced` (the boundary functions `q_sample`, `q_posterior`). Inside sampler loops
        the check is off (a conditional per step costs a host sync on GPU): there the table
        lookups give NaN for an out-of-range step instead of clamping it.
        """
        t = as_real_array(t, name)
        if not jnp.issubdtype(t.dtype, jnp.integer):
            raise TypeError(
                f"`{name}` must be integer steps in 0..{self.num_steps} for a discrete schedule, "
                f"got dtype {t.dtype}."
            )
        value = concrete(t)
        bounds = f"in {low}..T = {low}..{self.num_steps}"
        if value is None:
            if traced:
                t = eqx.error_if(t, (t < low) | (t > self.num_steps), f"`{name}` must lie {bounds}.")
        elif value.size and (value.min() < low or value.max() > self.num_steps):
            raise ValueError(
                f"`{name}` must lie {bounds}, got values in [{int(value.min())}, {int(value.max())}]."
            )
        return t

    def _lookup(self, table: Array, t: ArrayLike) -> Array:
        """`table[t]` for steps `t` in `0..T`, NaN (not a clamped entry) outside."""
        t = self.check_time(t, traced=False)
        inside = (t >= 0) & (t <= self.num_steps)
        return jnp.where(inside, table[jnp.clip(t, 0, self.num_steps)], jnp.nan)

    def alpha_bar(self, t: ArrayLike) -> Array:
        """`alpha_bar(t) = prod_{s=1}^t (1 - beta_s)`, same shape as `t`."""
        return self._lookup(self.alpha_bars, t)

    def beta(self, t: ArrayLike) -> Array:
        """`beta_t` for `t` in `1..T` (`t = 0` gives 0)."""
        return self._lookup(jnp.concatenate([jnp.zeros((1,), self.betas.dtype), self.betas]), t)

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        """`(sqrt(alpha_bar(t)), sqrt(1 - alpha_bar(t)))`."""
        ab = self.alpha_bar(t)
        return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)


def from_betas(betas: Values) -> DiscreteSchedule:
    """A schedule from given `betas[t-1] = beta_t`, each in `(0, 1)`."""
    return DiscreteSchedule(betas)


def _check_beta(value, name: str) -> float:
    if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool):
        raise TypeError(f"`{name}` must be a float, got {type(value).__name__}.")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"`{name}` must lie in (0, 1), got {value}.")
    return float(value)


def constant(num_steps: int = 1000, beta: float = 0.01) -> DiscreteSchedule:
    """The notes' schedule: `beta_t = beta` for every step, so `alpha_bar(t) = (1 - beta)^t`."""
    num_steps = check_positive_int(num_steps, "num_steps")
    beta = _check_beta(beta, "beta")
    return DiscreteSchedule(np.full(num_steps, beta))


def linear(
    num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> DiscreteSchedule:
    """Linearly spaced `beta_t` from `beta_start` to `beta_end` (Ho et al. 2020, arXiv:2006.11239)."""
    num_steps = check_positive_int(num_steps, "num_steps")
    beta_start = _check_beta(beta_start, "beta_start")
    beta_end = _check_beta(beta_end, "beta_end")
    if beta_start > beta_end:
        raise ValueError(f"`beta_start` ({beta_start}) must not exceed `beta_end` ({beta_end}).")
    return DiscreteSchedule(np.linspace(beta_start, beta_end, num_steps))


def cosine(num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteSchedule:
    """Cosine schedule (Nichol & Dhariwal 2021, arXiv:2102.09672, eq. 17).

    `alpha_bar(t) = f(t) / f(0)` with `f(t) = cos^2(pi/2 (t/T + s) / (1 + s))`, and
    `beta_t = min(1 - alpha_bar(t) / alpha_bar(t-1), max_beta)`.
    """
    num_steps = check_positive_int(num_steps, "num_steps")
    s = float(check_knob(s, "s", 0.0, strict=True))
    max_beta = _check_beta(max_beta, "max_beta")
    steps = np.arange(num_steps + 1, dtype=np.float64) / num_steps
    f = np.cos(0.5 * math.pi * (steps + s) / (1.0 + s)) ** 2
    alpha_bar = f / f[0]
    betas = np.clip(1.0 - alpha_bar[1:] / alpha_bar[:-1], 1e-12, max_beta)
    return DiscreteSchedule(betas)
