"""The forward process `q(x_t | x_0)`, the DDPM posterior, and prediction conversions.

Every forward process (discrete schedule or SDE) has `x_t = mean_coeff(t) x_0 + std(t) eps`.
Write `a = mean_coeff(t)`, `s = std(t)`. The four usual network outputs are related by

    eps,    x0 = (x_t - s eps) / a,    score = -eps / s,    v = a eps - s x0

(`v` of Salimans & Ho 2022, arXiv:2202.00512, written for general `a, s`). The conversions
below are exact algebra on these relations and wrap a model function `fn(x, t, *args)`.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
from jaxtyping import Array, ArrayLike

from diffjax._core import (
    AbstractForwardProcess,
    ModelFunction,
    as_float_array,
    check_batch_time,
    concrete,
    expand_to,
)
from diffjax.schedules import DiscreteSchedule

__all__ = [
    "PREDICTIONS",
    "AbstractForwardProcess",
    "convert",
    "eps_from_prediction",
    "eps_from_score",
    "eps_from_v",
    "eps_from_x0",
    "prediction_from_eps",
    "q_posterior",
    "q_sample",
    "score_from_eps",
    "v_from_eps",
    "x0_from_eps",
]

PREDICTIONS = ("eps", "x0", "score", "v")


def _check_process(process) -> AbstractForwardProcess:
    if not isinstance(process, AbstractForwardProcess):
        raise TypeError(
            "`process` must be a schedule (diffjax.schedules) or an SDE (diffjax.sde), "
            f"got {type(process).__name__}."
        )
    return process


def _coefficients(process, x: Array, t: ArrayLike) -> tuple[Array, Array]:
    """`(a, s)` of the marginal at `t`, shaped to broadcast against `x`."""
    t = _check_process(process).check_time(t)
    check_batch_time(x, t)
    a, s = process.marginal(t)
    return expand_to(a, x), expand_to(s, x)


def q_sample(process, x0: ArrayLike, t: ArrayLike, noise: ArrayLike) -> Array:
    """`x_t = mean_coeff(t) x_0 + std(t) eps`, a draw from `q(x_t | x_0)`.

    Args:
        process: a schedule (`t` integer steps) or an SDE (`t` real times).
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
    t = schedule.check_time(t)
    check_batch_time(x0, t)
    value = concrete(t)
    if value is not None and value.size and value.min() < 1:
        raise ValueError("`t` must lie in 1..T for the posterior q(x_{t-1} | x_t, x_0), got 0.")
    c0 = expand_to(schedule.posterior_mean_coef_x0[t], x0)
    ct = expand_to(schedule.posterior_mean_coef_xt[t], x0)
    return c0 * x0 + ct * x_t, schedule.posterior_variance[t]


def eps_from_prediction(prediction: str, value: Array, x_t: Array, a: Array, s: Array) -> Array:
    """Turn a network output of type `prediction` into `eps` (array algebra, coefficients given)."""
    if prediction == "eps":
        return value
    if prediction == "x0":
        return (x_t - a * value) / s
    if prediction == "score":
        return -s * value
    if prediction == "v":
        return (s * x_t + a * value) / (a**2 + s**2)
    raise ValueError(f"`prediction` must be one of {PREDICTIONS}, got {prediction!r}.")


def prediction_from_eps(prediction: str, eps: Array, x_t: Array, a: Array, s: Array) -> Array:
    """Inverse of `eps_from_prediction`."""
    if prediction == "eps":
        return eps
    x0 = (x_t - s * eps) / a
    if prediction == "x0":
        return x0
    if prediction == "score":
        return -eps / s
    if prediction == "v":
        return a * eps - s * x0
    raise ValueError(f"`prediction` must be one of {PREDICTIONS}, got {prediction!r}.")


def convert(model_fn: Callable, process, *, source: str, target: str) -> Callable:
    """Wrap `model_fn(x, t, *args) -> source-prediction` into `fn(x, t, *args) -> target-prediction`.

    `source` and `target` are each one of `"eps"`, `"x0"`, `"score"`, `"v"`.
    """
    for name, value in (("source", source), ("target", target)):
        if value not in PREDICTIONS:
            raise ValueError(f"`{name}` must be one of {PREDICTIONS}, got {value!r}.")
    _check_process(process)
    if not callable(model_fn):
        raise TypeError(f"`model_fn` must be callable, got {type(model_fn).__name__}.")
    if source == target:
        return model_fn
    return _Converted(model_fn, process, source, target)


class _Converted(ModelFunction):
    """`model_fn`'s `source` prediction re-expressed as a `target` prediction."""

    model_fn: Callable
    process: AbstractForwardProcess
    source: str = eqx.field(static=True)
    target: str = eqx.field(static=True)

    def __call__(self, x, t, *args, **kwargs):
        x = as_float_array(x, "x")
        a, s = _coefficients(self.process, x, t)
        eps = eps_from_prediction(self.source, self.model_fn(x, t, *args, **kwargs), x, a, s)
        return prediction_from_eps(self.target, eps, x, a, s)


def score_from_eps(eps_fn: Callable, process) -> Callable:
    """`s(x, t) = -eps(x, t) / std(t)`."""
    return convert(eps_fn, process, source="eps", target="score")


def eps_from_score(score_fn: Callable, process) -> Callable:
    """`eps(x, t) = -std(t) s(x, t)`."""
    return convert(score_fn, process, source="score", target="eps")


def x0_from_eps(eps_fn: Callable, process) -> Callable:
    """`x0(x, t) = (x - std(t) eps(x, t)) / mean_coeff(t)`."""
    return convert(eps_fn, process, source="eps", target="x0")


def eps_from_x0(x0_fn: Callable, process) -> Callable:
    """`eps(x, t) = (x - mean_coeff(t) x0(x, t)) / std(t)`."""
    return convert(x0_fn, process, source="x0", target="eps")


def v_from_eps(eps_fn: Callable, process) -> Callable:
    """`v(x, t) = mean_coeff(t) eps - std(t) x0`."""
    return convert(eps_fn, process, source="eps", target="v")


def eps_from_v(v_fn: Callable, process) -> Callable:
    """`eps(x, t) = (std x + mean_coeff v) / (mean_coeff^2 + std^2)`."""
    return convert(v_fn, process, source="v", target="eps")
