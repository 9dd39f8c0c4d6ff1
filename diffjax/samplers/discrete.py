"""DDPM ancestral sampling and DDIM (notes, topic 2), each one `lax.scan`.

`ddpm` runs the discrete chain of a `DiscreteSchedule`; `ddim` runs on a schedule's integer
steps or, given a model on a continuous process, on a time grid of that process (the same
update written with `alpha`, `sigma`: first-order DPM-Solver++ when `eta = 0`).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from diffjax._checks import check_choice, check_knob, check_positive_int, check_times
from diffjax._typing import Batch, Int, Key, Scalar, Shape, Values
from diffjax.model import Model
from diffjax.processes import AbstractProcess
from diffjax.samplers import _driver as drv

__all__ = ["ddim", "ddpm"]

DISCRETE_GRIDS = ("uniform", "quadratic", "trailing")


def ddpm(
    key: Key,
    model: Model,
    shape: Shape,
    *,
    variance: str = "beta_tilde",
    save_times: Values | None = None,
    projection: Callable | None = None,
) -> tuple[Batch, drv.SamplerInfo]:
    """DDPM ancestral sampling (Ho et al. 2020, arXiv:2006.11239; notes, topic 2, generation).

    `x_T ~ N(0, I)`; for `t = T..1`: `x_{t-1} = mu(x0_hat, x_t) + sigma_t z` with the posterior
    mean `mu` of `q(x_{t-1} | x_t, x_0)`, `x0_hat = model.x0(x_t, t)` and `sigma_t^2 = beta~_t`
    (`variance="beta_tilde"`) or `beta_t` (`"beta"`). No noise is added at `t = 1`, where
    `mu = x0_hat = E[x_0 | x_1]`: when `sigma_1 = sqrt(beta_1)` is not small against the data's
    scale (the notes' constant schedule with `beta = 0.01`), this mean shrinks narrow modes.

    Args:
        key: a JAX PRNG key.
        model: a `Model` on a `DiscreteSchedule` (called with integer `t: [B]` in `1..T`).
        shape: `[B, *event]`.
        variance: `"beta_tilde"` or `"beta"`.
        save_times: optional integer steps in `0..T`; `info.trajectory` holds the state at each.
        projection: optional `projection(key, x, t) -> x` applied to `x_T` and after every step
            (at the new step `t - 1`), e.g. `guidance.inpainting_projection`.

    Returns:
        `(x0 [B, *event], info)`, `info.nfe = T`.
    """
    key, shape = drv.check_common(key, shape)
    model = drv.check_model(model, shape, continuous=False)
    check_choice(variance, "variance", ("beta_tilde", "beta"))
    T = model.process.num_steps
    save_times = drv.check_save_times(save_times, 0, T, integer=True)
    drv.check_projection(projection, key, shape, jnp.int32)
    x, saved = _ddpm(key, model, shape, variance, save_times, projection)
    return drv.result(x, T, T, saved)


@eqx.filter_jit
def _ddpm(key, model, shape, variance, save_times, projection):
    schedule = model.process
    T = schedule.num_steps
    prior_key, key = jax.random.split(key)
    x = schedule.prior_sample(prior_key, shape)
    x = drv.project(projection, jax.random.fold_in(prior_key, 1), x, T)
    if variance == "beta_tilde":
        sigmas = jnp.sqrt(schedule.posterior_variance)
    else:
        sigmas = jnp.sqrt(jnp.concatenate([jnp.zeros((1,)), schedule.betas]))

    def step(carry, inputs):
        (x,) = carry
        t, k = inputs
        x0 = model.x0(x, jnp.full(shape[:1], t))
        mean = schedule.posterior_mean_coef_x0[t] * x0 + schedule.posterior_mean_coef_xt[t] * x
        z = jax.random.normal(k, shape, x.dtype)
        x = mean + jnp.where(t > 1, sigmas[t], 0.0) * z
        return (drv.project(projection, jax.random.fold_in(k, 1), x, t - 1),)

    xs = (jnp.arange(T, 0, -1), jax.random.split(key, T))
    (x,), saved = drv.scan_saving(step, (x,), xs, jnp.arange(T, -1, -1), save_times)
    return x, saved


def _ddim_steps(T: int, num_steps: int, grid: str) -> np.ndarray:
    """Increasing steps `tau_1 < ... < tau_N` in `1..T`."""
    if grid == "uniform":  # DDIM paper: tau_i = (i - 1) floor(T / N) + 1
        steps = np.arange(num_steps) * (T // num_steps) + 1
    elif grid == "quadratic":  # DDIM paper, Appendix D.2
        steps = np.floor(np.linspace(0, np.sqrt(0.8 * T), num_steps) ** 2).astype(int) + 1
        steps = np.maximum(steps, np.arange(1, num_steps + 1))  # no repeats near t = 0
    else:  # trailing (Lin et al. 2023, arXiv:2305.08891): the last step starts at T
        steps = np.round(T - np.arange(num_steps)[::-1] * (T / num_steps)).astype(int)
    if np.unique(steps).size != num_steps:
        raise ValueError(
            f"`num_steps`={num_steps} is too large for grid {grid!r} on T={T} steps "
            "(repeated steps)."
        )
    return steps


def ddim_update(x0, eps, z, a_s, s_s, lam_t, lam_s, eta) -> Array:
    """One DDIM step to noise level `(a_s, s_s)` (Song, Meng & Ermon 2021, eq. 12, any path).

    `x_s = a_s x0 + sqrt(s_s^2 - c^2) eps + c z` with
    `c^2 = eta^2 s_s^2 (1 - e^{2 (lam_t - lam_s)})`, `eta^2` times the variance of
    `q(x_s | x_t, x_0)`; `eta = 0` is deterministic, `eta = 1` the DDPM posterior.
    """
    c2 = eta**2 * s_s**2 * -jnp.expm1(2.0 * (lam_t - lam_s))
    return a_s * x0 + jnp.sqrt(jnp.maximum(s_s**2 - c2, 0.0)) * eps + jnp.sqrt(c2) * z


def ddim(
    key: Key,
    model: Model,
    shape: Shape,
    *,
    num_steps: Int = 50,
    eta: Scalar = 0.0,
    grid: str | None = None,
    rho: Scalar = 7.0,
    t_eps: Scalar | None = None,
    t_max: Scalar | None = None,
    process: AbstractProcess | None = None,
    save_times: Values | None = None,
    projection: Callable | None = None,
) -> tuple[Batch, drv.SamplerInfo]:
    """DDIM (Song, Meng & Ermon 2021, arXiv:2010.02502, eq. 12) on a sub-sequence of noise levels.

    From `t` to the next `s`: `x0, eps = model.x0_eps(x_t, t)`, then `ddim_update`. On a
    `DiscreteSchedule` the steps are integers `tau_N > ... > tau_1`, then `0` (`alpha = 1`,
    `sigma = 0`: the last step returns `x0_hat`), chosen by `grid`: `"uniform"` (default,
    `tau_i = (i-1) floor(T/N) + 1`), `"quadratic"` or `"trailing"` (`tau_N = T`). On a
    continuous process the grid runs from `t_max` to `t_eps` (`"logsnr"` default, `"time"`,
    `"karras"` with `rho`), followed by the denoising step `x0(x, t_eps)` (one more evaluation).

    Args:
        key: a JAX PRNG key.
        model: a `Model` (on a schedule, or on a continuous process).
        shape: `[B, *event]`.
        num_steps: number of steps `N` (at most `T` on a schedule).
        eta: in `[0, 1]`, may be traced.
        t_eps, t_max: on a continuous process, as in `dpm_solver` (by default rectified flow
            and the cosine path start at EDM noise level 80).
        process: optional continuous process to sample on (the model is moved to it).
        save_times: optional steps (schedule) or times; the state at the first grid point at or
            below each is saved.
        projection: optional `projection(key, x, t) -> x` applied to the initial state and after
            every step (at its new time).

    Returns:
        `(x0 [B, *event], info)`, `info.nfe = num_steps` (`+ 1` on a continuous process).
    """
    key, shape = drv.check_common(key, shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    eta = check_knob(eta, "eta", 0.0, 1.0)
    continuous = isinstance(model, Model) and (model.is_continuous or process is not None)
    model = drv.check_model(model, shape, continuous=continuous, process=process)
    if continuous:
        grid = "logsnr" if grid is None else grid
        rho = drv.check_grid(grid, rho)
        t_max = drv.default_t_max(model.process, t_max)
        t_eps, t_max = check_times(model.process, t_eps, t_max)
        save_times = drv.check_save_times(save_times, t_eps, t_max)
        t_dtype = t_eps.dtype
        ts = drv.time_grid(model.process, num_steps, grid, t_eps, t_max, rho)
    else:
        check_choice("uniform" if grid is None else grid, "grid", DISCRETE_GRIDS)
        T = model.process.num_steps
        if num_steps > T:
            raise ValueError(
                f"`num_steps` must not exceed the schedule's T = {T}, got {num_steps}."
            )
        taus = _ddim_steps(T, num_steps, "uniform" if grid is None else grid)
        save_times = drv.check_save_times(save_times, 0, T, integer=True)
        t_dtype = jnp.int32
        ts = jnp.asarray(np.concatenate([taus[::-1], [0]]))
    drv.check_projection(projection, key, shape, t_dtype)
    stochastic = not drv.is_zero(eta)
    x, saved = _ddim(key, model, shape, ts, eta, stochastic, save_times, projection)
    nfe = num_steps + int(continuous)
    return drv.result(x, nfe, num_steps, saved)


@eqx.filter_jit
def _ddim(key, model, shape, ts, eta, stochastic, save_times, projection):
    process = model.process
    prior_key, key = jax.random.split(key)
    x = process.prior_sample(prior_key, shape)
    x = drv.project(projection, jax.random.fold_in(prior_key, 1), x, ts[0])
    a, s = process.marginal(ts)
    if model.is_continuous:  # denoising as the last step: x0(x, t_eps), to alpha = 1, sigma = 0
        ts, a, s = drv.append_denoising(ts, a, s)
    num = ts.shape[0] - 1
    lam = jnp.log(a) - jnp.log(s) if stochastic else None  # +inf at the last step's end

    def step(carry, inputs):
        (x,) = carry
        i, k = inputs
        x0, eps = model.x0_eps(x, jnp.full(shape[:1], ts[i]))
        if stochastic:
            z = jax.random.normal(k, shape, x.dtype)
            x = ddim_update(x0, eps, z, a[i + 1], s[i + 1], lam[i], lam[i + 1], eta)
        else:  # eta concrete 0: `ddim_update` with c = 0, without its noise terms
            x = a[i + 1] * x0 + s[i + 1] * eps
        return (drv.project(projection, jax.random.fold_in(k, 1), x, ts[i + 1]),)

    xs = (jnp.arange(num), jax.random.split(key, num))
    (x,), saved = drv.scan_saving(step, (x,), xs, ts, save_times)
    return x, saved
