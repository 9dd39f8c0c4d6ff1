"""The probability-flow ODE through diffrax: sampling, `encode` and `decode` (notes, topic 5).

`dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 = model.velocity(x, t)` (Song et al. 2021,
arXiv:2011.13456, eq. 13), the velocity form being finite at both ends of every path.
"""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike

from diffjax._checks import (
    as_real_array,
    check_controller,
    check_key,
    check_positive_int,
    check_shape,
    check_solver,
    check_times,
    reraise_solver_error,
)
from diffjax._typing import Batch, Int, Key, Scalar, Shape, Values
from diffjax.model import Model
from diffjax.processes import AbstractProcess
from diffjax.samplers import _driver as drv
from diffjax.samplers.sde import _host_grid

__all__ = ["decode", "encode", "ode", "probability_flow", "reflow_coupling"]


def _options(
    model,
    shape,
    process,
    solver,
    stepsize_controller,
    num_steps,
    grid,
    rho,
    t_eps,
    t_max,
    max_steps,
):
    """Check the shared ODE options; returns `(model, solver, controller, t_eps, t_max, max_steps, fixed)`."""
    model = drv.check_model(model, shape, continuous=True, process=process)
    t_eps, t_max = check_times(model.process, t_eps, t_max)
    max_steps = check_positive_int(max_steps, "max_steps")
    rho = drv.check_grid(grid, rho)
    if num_steps is not None:
        num_steps = check_positive_int(num_steps, "num_steps")
        if stepsize_controller is not None:
            raise ValueError("pass either `num_steps` (fixed steps) or `stepsize_controller`.")
        solver = check_solver(solver, dfx.Heun(), fixed_steps=True, ode=True)
        return model, solver, None, t_eps, t_max, num_steps, rho
    solver = check_solver(solver, dfx.Tsit5(), ode=True)
    controller = check_controller(stepsize_controller, dfx.PIDController(rtol=1e-5, atol=1e-5))
    if isinstance(controller, dfx.AbstractAdaptiveStepSizeController) and not isinstance(
        solver, dfx.AbstractAdaptiveSolver
    ):
        raise ValueError(
            f"`solver` {type(solver).__name__} has no error estimate for the adaptive "
            "`stepsize_controller`; pass `num_steps` or an adaptive solver (diffrax.Tsit5())."
        )
    return model, solver, controller, t_eps, t_max, max_steps, rho


def _nfe(solver, steps):
    init_evals, per_step = drv.evals_per_step(solver)
    return init_evals + per_step * steps


@eqx.filter_jit
def _pf_ode(model, x, t0, t1, solver, controller, ts, max_steps, save):
    """Integrate `dx/dt = model.velocity(x, t)` from `t0` to `t1` (either direction)."""

    term = dfx.ODETerm(lambda t, y, args: model.velocity(y, t))
    if controller is None:  # fixed steps on the grid `ts` (in the direction of the solve)
        y, saved = drv.solve_fixed(solver, term, ts, x, ts, save)
        return y, saved, jnp.asarray(ts.shape[0] - 1)
    dt0 = (t1 - t0) / 64  # diffrax's PIDController with dt0=None would start at 0.01
    saveat = dfx.SaveAt(t1=True) if save is None else dfx.SaveAt(t1=True, ts=jnp.asarray(save))
    sol = dfx.diffeqsolve(
        term, solver, t0, t1, dt0, x, saveat=saveat, stepsize_controller=controller,
        max_steps=max_steps,
    )  # fmt: skip
    saved = None if save is None else (sol.ys[:-1], sol.ts[:-1])
    return sol.ys[-1], saved, sol.stats["num_steps"]


def probability_flow(
    key: Key,
    model: Model,
    shape: Shape,
    *,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    num_steps: Int | None = None,
    grid: str = "logsnr",
    rho: Scalar = 7.0,
    t_eps: Scalar | None = None,
    t_max: Scalar | None = None,
    max_steps: Int = 4096,
    process: AbstractProcess | None = None,
    save_times: Values | None = None,
) -> tuple[Batch, drv.SamplerInfo]:
    """Probability-flow ODE sampler: `x_T ~ p_T`, then `dx/dt = model.velocity(x, t)` to `t_eps`.

    Integrated by diffrax: adaptive by default (`diffeqsolve`, `Tsit5()` with
    `PIDController(rtol=1e-5, atol=1e-5)`, or the `solver` / `stepsize_controller` given), or on
    a fixed `grid` of `num_steps` steps (`Heun()` by default; the solver's steps in one
    `lax.scan`, the states `diffeqsolve` with `StepTo` gives); then the denoising step
    `model.x0(x, t_eps)`. Deterministic given `key` (it draws `x_T` only). Under `vmap` over
    keys an adaptive solve takes each example's own steps, while a batch shares one step size:
    the two agree to the tolerances, not to round-off.

    Args:
        save_times: optional times in `[t_eps, t_max]`; `info.trajectory` holds the (not
            denoised) states there, from the solver's dense output.

    Returns:
        `(x0 [B, *event], info)`, `info.nfe` (including the denoising step), `info.num_steps`.
    """
    key, shape = drv.check_common(key, shape)
    model, solver, controller, t_eps, t_max, max_steps, rho = _options(
        model, shape, process, solver, stepsize_controller, num_steps, grid, rho, t_eps, t_max,
        max_steps,
    )  # fmt: skip
    save_times = drv.check_save_times(save_times, t_eps, t_max)
    ts = None
    if controller is None:
        ts = _host_grid(model.process, max_steps, grid, t_eps, t_max, rho, save_times)
        max_steps = ts.shape[0] - 1
    try:
        x, saved, steps = _sample(
            key, model, shape, solver, controller, ts, t_eps, t_max, max_steps, save_times
        )
    except Exception as err:
        reraise_solver_error(err, max_steps)
    return drv.result(x, _nfe(solver, steps) + 1, steps, saved)


ode = probability_flow


@eqx.filter_jit
def _sample(key, model, shape, solver, controller, ts, t_eps, t_max, max_steps, save):
    x = model.process.prior_sample(key, shape)
    x, saved, steps = _pf_ode(model, x, t_max, t_eps, solver, controller, ts, max_steps, save)
    return model.x0(x, jnp.full(shape[:1], t_eps)), saved, steps


def _transport(
    model,
    y,
    name,
    forward,
    process,
    solver,
    stepsize_controller,
    num_steps,
    grid,
    rho,
    t_eps,
    t_max,
    max_steps,
):
    """Carry `y` along the PF-ODE between `t_eps` and `t_max` (up when `forward`), no noise."""
    y = as_real_array(y, name)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a float array, got dtype {y.dtype}.")
    shape = check_shape(y.shape, f"{name}.shape")
    model, solver, controller, t_eps, t_max, max_steps, rho = _options(
        model, shape, process, solver, stepsize_controller, num_steps, grid, rho, t_eps, t_max,
        max_steps,
    )  # fmt: skip
    ts = None
    if controller is None:
        ts = _host_grid(model.process, max_steps, grid, t_eps, t_max, rho, None)
        ts = ts[::-1] if forward else ts
    t0, t1 = (t_eps, t_max) if forward else (t_max, t_eps)
    try:
        out, _, steps = _pf_ode(model, y, t0, t1, solver, controller, ts, max_steps, None)
    except Exception as err:
        reraise_solver_error(err, max_steps)
    return drv.result(out, _nfe(solver, steps), steps, None)


def encode(
    model: Model,
    x: ArrayLike,
    *,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    num_steps: Int | None = None,
    grid: str = "logsnr",
    rho: Scalar = 7.0,
    t_eps: Scalar | None = None,
    t_max: Scalar | None = None,
    max_steps: Int = 4096,
    process: AbstractProcess | None = None,
):
    """Map data to latents along the PF-ODE, from `t_eps` up to `t_max` (no noise, invertible).

    `x` is taken as the state at `t_eps`. Returns `(z [B, *event], info)`;
    `decode(model, encode(model, x)[0])[0]` returns `x` up to the solver tolerance.
    """
    return _transport(
        model,
        x,
        "x",
        True,
        process,
        solver,
        stepsize_controller,
        num_steps,
        grid,
        rho,
        t_eps,
        t_max,
        max_steps,
    )


def decode(
    model: Model,
    z: ArrayLike,
    *,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    num_steps: Int | None = None,
    grid: str = "logsnr",
    rho: Scalar = 7.0,
    t_eps: Scalar | None = None,
    t_max: Scalar | None = None,
    max_steps: Int = 4096,
    process: AbstractProcess | None = None,
):
    """Map latents at `t_max` to the PF-ODE state at `t_eps` (the inverse of `encode`; no denoising).

    Returns `(x [B, *event], info)`.
    """
    return _transport(
        model,
        z,
        "z",
        False,
        process,
        solver,
        stepsize_controller,
        num_steps,
        grid,
        rho,
        t_eps,
        t_max,
        max_steps,
    )


def reflow_coupling(key: Key, model: Model, shape: Shape, **decode_options):
    """Pairs `(x_0, eps)` of the model's PF-ODE coupling, for reflow (Liu et al. 2023,
    arXiv:2209.03003, §2.2): `eps ~ N(0, I)` `[B, *event]`, `x_0 = decode(model,
    prior_std * eps)`, the state at `t_eps` (the process' own unless `t_eps=` is passed).

    Train on them with `losses.flow_matching(..., x_0, noise=eps)`: the new velocity field
    transports each `eps` along the straight line to its own `x_0`, so it needs fewer steps.
    `decode_options` go to `decode` (`num_steps`, `solver`, `stepsize_controller`, ...).

    Returns:
        `(x0 [B, *event], eps [B, *event], info)`, `info` the `decode` solve's.
    """
    shape = check_shape(shape)
    if not isinstance(model, Model):
        raise TypeError(f"`model` must be a diffjax Model, got {type(model).__name__}.")
    eps = jax.random.normal(check_key(key), shape)
    x0, info = decode(model, model.process.prior_std * eps, **decode_options)
    return x0, eps, info
