"""The forward process `q(x_t | x_0)` and the DDPM posterior `q(x_{t-1} | x_t, x_0)` (notes, topic 2).

Every process (discrete schedule or continuous path) has `x_t = alpha(t) x_0 + sigma(t) eps`.
The conversions between network outputs live in `diffjax.model`.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Array, ArrayLike

from diffjax._checks import (
    as_float_array,
    check_batch_time,
    concrete,
    expand_to,
)
from diffjax.processes import AbstractMarginal
from diffjax.schedules import DiscreteSchedule

__all__ = ["q_posterior", "q_sample"]


def _coefficients(process, x: Array, t: ArrayLike) -> tuple[Array, Array]:
    """`(a, s)` of the marginal at `t`, shaped to broadcast against `x`."""
    if not isinstance(process, AbstractMarginal):
        raise TypeError(
            f"`process` must be a diffjax process or schedule, got {type(process).__name__}."
        )
    if isinstance(process, DiscreteSchedule):
        t = process.check_time(t)
    else:
        t = as_float_array(t, "t")
        value = concrete(t)
        if value is not None and value.size and not (
            np.all(np.isfinite(value)) and value.min() >= 0 and value.max() <= process.T * (1 + 1e-6)
        ):
            raise ValueError(f"`t` must lie in [0, T] = [0, {process.T}], got {value}.")
    check_batch_time(x, t)
    a, s = process.marginal(t)
    return expand_to(a, x), expand_to(s, x)


def q_sample(process, x0: ArrayLike, t: ArrayLike, noise: ArrayLike) -> Array:
    """`x_t = mean_coeff(t) x_0 + std(t) eps`, a draw from `q(x_t | x_0)`.

    Args:
        process: a schedule (`t` integer steps) or a continuous process (`t` real times).
        x0: `[B, *event]` clean data.
        t: scalar or `[B]`.
        noise: `eps`, same shape as `x0`.
    """
    x0 = as_float_array(x0, "x0")
    noise = as_float_array(noise, "noise")
    if noise.shape != x0.shape:
        raise ValueError(f"`noise` must have the shape of `x0` {x0.shape}, got {noise.shape}.")
    a, s = _coefficients(process, x0, t)
    return a * x0 + s * noise


def q_posterior(
    schedule: DiscreteSchedule, x0: ArrayLike, x_t: ArrayLike, t: ArrayLike
) -> tuple[Array, Array]:
    """The DDPM posterior `q(x_{t-1} | x_t, x_0) = N(mu(x_0, x_t), beta~_t I)` for `t` in `1..T`.

    With `alpha_bar` the cumulative product (the notes' `alpha_t`; see DESIGN.md errata):
    `mu = sqrt(alpha_bar(t-1)) beta_t / (1 - alpha_bar(t)) x_0
          + sqrt(1 - beta_t) (1 - alpha_bar(t-1)) / (1 - alpha_bar(t)) x_t`,
    `beta~_t = (1 - alpha_bar(t-1)) / (1 - alpha_bar(t)) beta_t`.

    Returns:
        `(mean [B, *event], variance)` with `variance` of the shape of `t`.
    """
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"`schedule` must be a DiscreteSchedule, got {type(schedule).__name__}.")
    x0 = as_float_array(x0, "x0")
    x_t = as_float_array(x_t, "x_t")
    if x0.shape != x_t.shape:
        raise ValueError(f"`x_t` must have the shape of `x0` {x0.shape}, got {x_t.shape}.")
    t = schedule.check_time(t, low=1)  # q(x_{t-1} | x_t, x_0) needs t >= 1
    check_batch_time(x0, t)
    c0 = expand_to(schedule.posterior_mean_coef_x0[t], x0)
    ct = expand_to(schedule.posterior_mean_coef_xt[t], x0)
    return c0 * x0 + ct * x_t, schedule.posterior_variance[t]
