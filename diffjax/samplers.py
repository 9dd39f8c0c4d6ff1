"""Samplers: DDPM ancestral, DDIM, reverse SDE, predictor-corrector, probability-flow ODE, DPM-Solver++.

Every sampler draws a whole batch `[B, *event]` (vectors `[B, D]` or images `[B, H, W, C]`) as one
state in one compiled program: the discrete maps (DDPM, DDIM, predictor-corrector, DPM-Solver)
run as one `lax.scan`, the continuous ones (reverse SDE, PF-ODE) as one `diffrax.diffeqsolve`.
Each returns `(samples, info)` with `info["nfe"]` the number of model evaluations, is `jit`- and
`vmap`-able (over keys), and gives the same samples for the same key.

The last step is denoised: the output is the posterior mean `E[x_0 | x_t]` at the last time
(Tweedie, `x0 = (x + std^2 s(x, t)) / mean_coeff`; for DDPM/DDIM the noise-free last step), the
notes' step 3 of generation with `s -> 0`.

Intermediate states: pass `save_times` (a concrete 1-D array) and read `info["trajectory"]`
(`[S, B, *event]`, the raw, not denoised, states) at `info["times"]` (`[S]`, in sampling order, i.e.
decreasing). `reverse_sde` and `ode` save exactly at the requested times (the SDE steps to them);
the `lax.scan` samplers save the state at the first grid time at or below each requested time,
and `info["times"]` reports that grid time.

Imputation: `ddpm`, `ddim`, `reverse_sde` and `predictor_corrector` take `projection=`, a function
`projection(key, x, t) -> x` applied to the initial state and after every step at the step's new
time (e.g. `guidance.inpainting_projection`, the replacement method of Song et al. 2021,
arXiv:2011.13456, App. I.2); the SDE samplers also apply it at `t = 0` after denoising.

Model conventions: discrete schedules call `eps_fn(x, t)` with integer `t: [B]` in `1..T`; SDE
samplers call `score_fn(x, t)` / `eps_fn(x, t)` with float `t: [B]` in `[t_eps, T]`.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike

from diffjax._core import (
    check_choice,
    check_key,
    check_model,
    check_positive_float,
    check_positive_int,
    check_shape,
    check_t_eps,
    evals_per_step,
    is_concrete,
)
from diffjax.langevin import NORMS, langevin_corrector
from diffjax.schedules import DiscreteSchedule
from diffjax.sde import VPSDE, AbstractSDE

__all__ = [
    "ddim",
    "ddpm",
    "decode",
    "dpm_solver",
    "encode",
    "ode",
    "predictor_corrector",
    "reverse_sde",
]

_FLOAT = jnp.result_type(float)


# ---------------------------------------------------------------- argument checks
def _check_schedule(schedule) -> DiscreteSchedule:
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(
            f"`schedule` must be a diffjax.schedules.DiscreteSchedule, got {type(schedule).__name__}."
        )
    return schedule


def _check_sde(sde, cls=AbstractSDE) -> AbstractSDE:
    if not isinstance(sde, cls):
        raise TypeError(f"`sde` must be a diffjax.sde.{cls.__name__}, got {type(sde).__name__}.")
    return sde


def _check_save_times(save_times, lo: float, hi: float, *, integer: bool = False):
    """Concrete 1-D times in `[lo, hi]`, returned sorted decreasing (sampling order), or None."""
    if save_times is None:
        return None
    if not is_concrete(save_times):
        raise TypeError("`save_times` must be concrete (not traced): they fix the program's shape.")
    arr = np.asarray(save_times)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"`save_times` must be a non-empty 1-D array, got shape {arr.shape}.")
    if integer and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`save_times` must be integer steps for a schedule, got {arr.dtype}.")
    if not np.all(np.isfinite(arr)) or arr.min() < lo or arr.max() > hi:
        raise ValueError(f"`save_times` must lie in [{lo}, {hi}], got [{arr.min()}, {arr.max()}].")
    return np.sort(arr)[::-1].copy()


# ---------------------------------------------------------------- shared pieces
def _scan(step: Callable, carry, xs, grid: Array, save_times):
    """Run `carry = step(carry, xs[i])` in one `lax.scan`; `carry[0]` is the state `x`.

    `grid[0]` is the time of the initial state and `grid[i]` the time after step `i` (decreasing).
    With `save_times`, also returns `(trajectory [S, B, *event], times [S])`: for each requested
    time, the state at the first grid time at or below it.
    """
    if save_times is None:
        return jax.lax.scan(lambda c, xi: (step(c, xi), None), carry, xs)[0], None
    x = carry[0]
    tol = 1e-5 * jnp.max(jnp.abs(grid)) if jnp.issubdtype(grid.dtype, jnp.floating) else 0
    save_times = jnp.asarray(save_times, grid.dtype)
    index = jnp.argmax(grid[None, :] <= save_times[:, None] + tol, axis=1)  # [S]

    def put(i, x, buf):
        mask = (index == i).reshape((-1,) + (1,) * x.ndim)
        return jax.lax.cond(
            jnp.any(index == i), lambda b: jnp.where(mask, x[None], b), lambda b: b, buf
        )

    buf = put(0, x, jnp.zeros((save_times.shape[0],) + x.shape, x.dtype))

    def body(c, inputs):
        inner, buf = c
        i, xi = inputs
        inner = step(inner, xi)
        return (inner, put(i, inner[0], buf)), None

    num = grid.shape[0] - 1
    (carry, buf), _ = jax.lax.scan(body, (carry, buf), (jnp.arange(1, num + 1), xs))
    return carry, (buf, grid[index])


def _with_trajectory(info: dict, saved) -> dict:
    if saved is not None:
        info["trajectory"], info["times"] = saved
    return info


def _denoise(score_fn, sde: AbstractSDE, x: Array, t: float) -> Array:
    """Tweedie: `E[x_0 | x_t] = (x + std(t)^2 s(x, t)) / mean_coeff(t)`."""
    mean_coeff, std = sde.marginal(jnp.asarray(t, x.dtype))
    return (x + std**2 * score_fn(x, jnp.full(x.shape[:1], t, x.dtype))) / mean_coeff


def _check_solver(solver, name: str = "solver") -> None:
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(f"`{name}` must be a diffrax solver, got {type(solver).__name__}.")
    evals_per_step(solver)


def _check_projection(projection, key, shape: tuple[int, ...], t_dtype) -> None:
    """`projection(key, x, t) -> x` must be callable and keep the state's shape (checked abstractly)."""
    if projection is None:
        return
    if not callable(projection):
        raise TypeError(
            f"`projection` must be callable as projection(key, x, t), got {type(projection).__name__}."
        )
    x = jax.ShapeDtypeStruct(shape, _FLOAT)
    try:
        out = jax.eval_shape(projection, key, x, jax.ShapeDtypeStruct((), t_dtype))
    except Exception as err:  # the projection's own error, re-raised naming the argument
        raise ValueError(
            f"`projection` could not be evaluated on x of shape {shape}: {type(err).__name__}: {err}"
        ) from err
    if getattr(out, "shape", None) != shape:
        raise ValueError(
            f"`projection` must return an array of the state's shape {shape}, got "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )


def _project(projection, key, x: Array, t) -> Array:
    """`projection(key, x, t)`, or `x` when there is none."""
    return x if projection is None else projection(key, x, t)


def _levy_area(solver):
    """The cheapest Brownian increment type the solver accepts."""
    minimal = getattr(solver, "minimal_levy_area", dfx.BrownianIncrement)
    for cls in (dfx.BrownianIncrement, dfx.SpaceTimeLevyArea, dfx.SpaceTimeTimeLevyArea):
        if issubclass(cls, minimal):
            return cls
    raise TypeError(f"`solver` needs an unsupported Brownian path: {minimal.__name__}.")


# ---------------------------------------------------------------- DDPM
def ddpm(
    key,
    eps_fn: Callable,
    schedule: DiscreteSchedule,
    shape,
    *,
    variance: str = "beta_tilde",
    save_times: ArrayLike | None = None,
    projection: Callable | None = None,
):
    """DDPM ancestral sampling (Ho et al. 2020, arXiv:2006.11239; notes, topic 2, generation).

    `x_T ~ N(0, I)`; for `t = T..1`: `x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps(x_t, t)) /
    sqrt(alpha_bar_t)`, `x_{t-1} = mu(x0_hat, x_t) + sigma_t z` with the posterior mean `mu` of
    `q(x_{t-1} | x_t, x_0)` and `sigma_t^2 = beta~_t` (`variance="beta_tilde"`) or `beta_t`
    (`"beta"`). No noise is added at `t = 1`, where `mu = x0_hat`.

    Args:
        key: a JAX PRNG key.
        eps_fn: `eps(x, t)` with `x: [B, *event]`, integer `t: [B]` in `1..T`.
        schedule: a `DiscreteSchedule`.
        shape: `[B, *event]`.
        variance: `"beta_tilde"` or `"beta"`.
        save_times: optional integer steps in `0..T` to save (see the module docstring).
        projection: optional `projection(key, x, t) -> x` applied to the initial state (at
            `T`) and after every step (at the new step `t - 1`), e.g.
            `guidance.inpainting_projection` (see the module docstring).

    Returns:
        `(x0 [B, *event], info)`, `info["nfe"] = T`.
    """
    key = check_key(key)
    schedule = _check_schedule(schedule)
    shape = check_shape(shape)
    check_choice(variance, "variance", ("beta_tilde", "beta"))
    T = schedule.num_steps
    save_times = _check_save_times(save_times, 0, T, integer=True)
    check_model(eps_fn, "eps_fn", shape, jnp.int32)
    _check_projection(projection, key, shape, jnp.int32)
    x, saved = _ddpm(key, eps_fn, schedule, shape, variance, save_times, projection)
    return x, _with_trajectory({"nfe": T}, saved)


@eqx.filter_jit
def _ddpm(key, eps_fn, schedule, shape, variance, save_times, projection):
    T = schedule.num_steps
    prior_key, key = jax.random.split(key)
    x = jax.random.normal(prior_key, shape, _FLOAT)
    x = _project(projection, jax.random.fold_in(prior_key, 1), x, T)
    steps = jnp.arange(T, 0, -1)
    if variance == "beta_tilde":
        sigmas = jnp.sqrt(schedule.posterior_variance)
    else:
        sigmas = jnp.sqrt(jnp.concatenate([jnp.zeros((1,)), schedule.betas]))

    def step(carry, inputs):
        (x,) = carry
        t, k = inputs
        ab = schedule.alpha_bars[t]
        eps = eps_fn(x, jnp.full(shape[:1], t))
        x0 = (x - jnp.sqrt(1.0 - ab) * eps) / jnp.sqrt(ab)
        mean = schedule.posterior_mean_coef_x0[t] * x0 + schedule.posterior_mean_coef_xt[t] * x
        z = jax.random.normal(k, shape, x.dtype)
        x = mean + jnp.where(t > 1, sigmas[t], 0.0) * z
        return (_project(projection, jax.random.fold_in(k, 1), x, t - 1),)

    grid = jnp.arange(T, -1, -1)
    (x,), saved = _scan(step, (x,), (steps, jax.random.split(key, T)), grid, save_times)
    return x, saved


# ---------------------------------------------------------------- DDIM
def _ddim_steps(T: int, num_steps: int, spacing: str) -> np.ndarray:
    """Increasing steps `tau_1 < ... < tau_N` in `1..T`."""
    if spacing == "uniform":  # DDIM paper: tau_i = (i - 1) floor(T / N) + 1
        steps = np.arange(num_steps) * (T // num_steps) + 1
    elif spacing == "quadratic":  # DDIM paper, Appendix D.2
        steps = np.floor(np.linspace(0, np.sqrt(0.8 * T), num_steps) ** 2).astype(int) + 1
        steps = np.maximum(steps, np.arange(1, num_steps + 1))  # no repeats near t = 0
    else:  # trailing (Lin et al. 2023, arXiv:2305.08891): the last step starts at T
        steps = np.round(T - np.arange(num_steps)[::-1] * (T / num_steps)).astype(int)
    if np.unique(steps).size != num_steps:
        raise ValueError(
            f"`num_steps`={num_steps} is too large for spacing {spacing!r} on T={T} steps "
            "(repeated steps)."
        )
    return steps


def ddim(
    key,
    eps_fn: Callable,
    schedule: DiscreteSchedule,
    shape,
    *,
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = "uniform",
    save_times: ArrayLike | None = None,
    projection: Callable | None = None,
):
    """DDIM (Song, Meng & Ermon 2021, arXiv:2010.02502, eq. 12) on a sub-sequence of steps.

    From `t = tau_i` to `s = tau_{i-1}` (`tau_0 = 0`, `alpha_bar_0 = 1`):
    `x_s = sqrt(alpha_bar_s) x0_hat + sqrt(1 - alpha_bar_s - sigma^2) eps + sigma z` with
    `sigma = eta sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_s)`;
    `eta = 0` is deterministic, `eta = 1` is DDPM-like. The last step returns `x0_hat`.

    Args:
        key: a JAX PRNG key.
        eps_fn: `eps(x, t)` with integer `t: [B]` in `1..T`.
        schedule: a `DiscreteSchedule`.
        shape: `[B, *event]`.
        num_steps: number of steps `N <= T`.
        eta: in `[0, 1]`.
        spacing: `"uniform"` (`tau_i = (i-1) floor(T/N) + 1`), `"quadratic"` or `"trailing"`
            (`tau_N = T`).
        save_times: optional integer steps in `0..T` (see the module docstring).
        projection: optional `projection(key, x, t) -> x` applied to the initial state (at
            the first step `tau_N`) and after every step (at the new step `s`; the last is
            `s = 0`, which restores known values exactly).

    Returns:
        `(x0 [B, *event], info)`, `info["nfe"] = num_steps`.
    """
    key = check_key(key)
    schedule = _check_schedule(schedule)
    shape = check_shape(shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    eta = float(eta) if isinstance(eta, (int, float, np.floating)) else eta
    if not isinstance(eta, float) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"`eta` must be a float in [0, 1], got {eta!r}.")
    check_choice(spacing, "spacing", ("uniform", "quadratic", "trailing"))
    T = schedule.num_steps
    if num_steps > T:
        raise ValueError(f"`num_steps` must not exceed the schedule's T = {T}, got {num_steps}.")
    taus = _ddim_steps(T, num_steps, spacing)
    save_times = _check_save_times(save_times, 0, T, integer=True)
    check_model(eps_fn, "eps_fn", shape, jnp.int32)
    _check_projection(projection, key, shape, jnp.int32)
    grid = np.concatenate([taus[::-1], [0]])
    x, saved = _ddim(key, eps_fn, schedule, shape, jnp.asarray(grid), eta, save_times, projection)
    return x, _with_trajectory({"nfe": num_steps}, saved)


@eqx.filter_jit
def _ddim(key, eps_fn, schedule, shape, grid, eta, save_times, projection):
    prior_key, key = jax.random.split(key)
    x = jax.random.normal(prior_key, shape, _FLOAT)
    x = _project(projection, jax.random.fold_in(prior_key, 1), x, grid[0])
    num = grid.shape[0] - 1

    def step(carry, inputs):
        (x,) = carry
        t, s, k = inputs
        ab_t, ab_s = schedule.alpha_bars[t], schedule.alpha_bars[s]
        eps = eps_fn(x, jnp.full(shape[:1], t))
        x0 = (x - jnp.sqrt(1.0 - ab_t) * eps) / jnp.sqrt(ab_t)
        sigma = eta * jnp.sqrt((1.0 - ab_s) / (1.0 - ab_t) * (1.0 - ab_t / ab_s))
        z = jax.random.normal(k, shape, x.dtype)
        dir_coef = jnp.sqrt(jnp.maximum(1.0 - ab_s - sigma**2, 0.0))
        x = jnp.sqrt(ab_s) * x0 + dir_coef * eps + sigma * z
        return (_project(projection, jax.random.fold_in(k, 1), x, s),)

    xs = (grid[:-1], grid[1:], jax.random.split(key, num))
    (x,), saved = _scan(step, (x,), xs, grid, save_times)
    return x, saved


# ---------------------------------------------------------------- reverse SDE (diffrax)
def reverse_sde(
    key,
    score_fn: Callable,
    sde: AbstractSDE,
    shape,
    *,
    num_steps: int = 1000,
    solver: dfx.AbstractSolver | None = None,
    t_eps: float = 1e-3,
    adaptive: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    max_steps: int = 16384,
    save_times: ArrayLike | None = None,
    projection: Callable | None = None,
):
    """The reverse-time SDE `dx = [f(x, t) - g(t)^2 s(x, t)] dt + g(t) dW`, from `T` to `t_eps`.

    Song et al. 2021 (arXiv:2011.13456, eq. 6), `dt < 0` and `dW` a reverse-time Wiener process;
    `diffrax.diffeqsolve` integrates it forward in `tau = T - t` from `0` to `T - t_eps`, the
    batch as one state, `x_T ~ p_T`, then the Tweedie denoising step at `t_eps`. The noise is additive (`g` depends on `t` only), so additive-noise
    stochastic Runge-Kutta solvers apply: `diffrax.SEA()`, `diffrax.ShARK()`, `diffrax.SRA1()`
    (they get a Brownian path with space-time Levy area), and `diffrax.Heun()` (Ito = Stratonovich
    for additive noise).

    Fixed steps (default): `num_steps` uniform steps plus the `save_times`, with a
    `diffrax.UnsafeBrownianPath` (fresh increments per step, forward-mode adjoint). Adaptive
    (`adaptive=True`): `diffrax.PIDController(rtol, atol)` with a `VirtualBrownianTree`; the
    solver needs an error estimate (default `diffrax.ShARK()`).

    Args:
        key: a JAX PRNG key.
        score_fn: `s(x, t)` with `x: [B, *event]`, `t: [B]` float.
        sde: an `AbstractSDE`.
        shape: `[B, *event]`.
        num_steps: fixed steps (ignored when adaptive).
        solver: a diffrax solver; default `diffrax.Euler()` (Euler-Maruyama), or `ShARK()` when
            adaptive.
        t_eps: the final time, in `(0, T)`.
        adaptive, rtol, atol, max_steps: adaptive stepping.
        save_times: optional times in `[t_eps, T]` at which `info["trajectory"]` holds the
            (not denoised) state, exactly (the solver steps to them).
        projection: optional `projection(key, x, t) -> x` (fixed steps only), e.g.
            `guidance.inpainting_projection`: applied to `x_T`, after every solver step (at the
            step's end time) and, at `t = 0`, after the denoising step. The fixed-step solve then
            runs as one `lax.scan` of single `solver.step`s on the same grid and Brownian path
            (a projection that changes nothing gives the plain solve's samples); FSAL solvers
            re-evaluate their first stage after each projection.

    Returns:
        `(x0 [B, *event], info)` with `info["nfe"]` (a scalar array: steps times drift
        evaluations per step, plus 1 for denoising) and `info["num_steps"]`.
    """
    key = check_key(key)
    sde = _check_sde(sde)
    shape = check_shape(shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    max_steps = check_positive_int(max_steps, "max_steps")
    t_eps = check_t_eps(t_eps, sde.T)
    adaptive = bool(adaptive)
    if solver is None:
        solver = dfx.ShARK() if adaptive else dfx.Euler()
    _check_solver(solver)
    if adaptive:
        rtol, atol = check_positive_float(rtol, "rtol"), check_positive_float(atol, "atol")
        if not isinstance(solver, dfx.AbstractAdaptiveSolver) and not (
            getattr(getattr(solver, "tableau", None), "b_error", None) is not None
        ):
            raise ValueError(
                f"`solver` {type(solver).__name__} has no error estimate; adaptive steps need one "
                "(e.g. diffrax.ShARK() or diffrax.Heun())."
            )
    save_times = _check_save_times(save_times, t_eps, sde.T)
    check_model(score_fn, "score_fn", shape, _FLOAT)
    if projection is not None and adaptive:
        raise ValueError("`projection` needs fixed steps: pass `adaptive=False`.")
    _check_projection(projection, key, shape, _FLOAT)
    if adaptive:
        controller = dfx.PIDController(
            rtol=rtol,
            atol=atol,
            dtmin=(sde.T - t_eps) / max_steps,
            step_ts=None if save_times is None else jnp.asarray(sde.T - save_times, _FLOAT),
        )
    else:
        grid = np.linspace(sde.T, t_eps, num_steps + 1)
        if save_times is not None:
            grid = np.unique(np.concatenate([grid, save_times]))[::-1]
        controller = dfx.StepTo(ts=jnp.asarray(sde.T - grid, _FLOAT))
        max_steps = grid.size - 1
    x, saved, steps = _reverse_sde(
        key, score_fn, sde, shape, solver, controller, t_eps, adaptive, max_steps, save_times,
        projection,
    )  # fmt: skip
    init_evals, per_step = evals_per_step(solver)
    if projection is not None:  # FSAL: the first stage is re-evaluated after every projection
        per_step = init_evals + per_step
    info = {"nfe": init_evals + per_step * steps + 1, "num_steps": steps}
    return x, _with_trajectory(info, saved)


@eqx.filter_jit
def _reverse_sde(
    key, score_fn, sde, shape, solver, controller, t_eps, adaptive, max_steps, save, projection
):
    # Integrated forward in the reversed time `tau = T - t` on `[0, T - t_eps]`:
    # `dx = -[f - g^2 s](x, T - tau) dtau + g(T - tau) dW_tau`. (diffrax's stochastic Runge-Kutta
    # solvers take `h = t1 - t0` in the sign-flipped frame of a `t0 > t1` solve, which flips
    # their drift; a forward solve is right for every solver and for `VirtualBrownianTree`.)
    prior_key, bm_key = jax.random.split(key)
    x = sde.prior_sample(prior_key, shape)
    levy_area = _levy_area(solver)
    tau1 = sde.T - t_eps
    if adaptive:
        tol = controller.dtmin / 2
        bm = dfx.VirtualBrownianTree(0.0, tau1, tol, shape, bm_key, levy_area=levy_area)
        adjoint = dfx.RecursiveCheckpointAdjoint()
    else:
        bm = dfx.UnsafeBrownianPath(shape, bm_key, levy_area=levy_area)
        adjoint = dfx.ForwardMode()

    def drift(tau, y, args):
        return -sde.reverse_drift(score_fn, y, sde.T - tau)

    def diffusion(tau, y, args):
        return lx.DiagonalLinearOperator(jnp.broadcast_to(sde.diffusion(sde.T - tau), y.shape))

    terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, bm))
    if projection is not None:
        taus = controller.ts
        return _projected_sde(key, score_fn, sde, x, solver, terms, taus, t_eps, projection, save)
    saveat = dfx.SaveAt(t1=True)
    if save is not None:
        saveat = dfx.SaveAt(t1=True, ts=jnp.asarray(sde.T - save, _FLOAT))
    sol = dfx.diffeqsolve(
        terms,
        solver,
        0.0,
        tau1,
        dt0=tau1 / 64 if adaptive else None,
        y0=x,
        saveat=saveat,
        stepsize_controller=controller,
        adjoint=adjoint,
        max_steps=max_steps,
    )
    x = _denoise(score_fn, sde, sol.ys[-1], t_eps)
    saved = None if save is None else (sol.ys[:-1], sde.T - sol.ts[:-1])
    return x, saved, sol.stats["num_steps"]


def _projected_sde(key, score_fn, sde, x, solver, terms, taus, t_eps, projection, save):
    """The fixed-step solve of `_reverse_sde` as one `lax.scan` of `solver.step` on the grid
    `taus` (in `tau = T - t`), with `x = projection(key_i, x, T - tau_{i+1})` after each step.

    `made_jump=True` tells FSAL solvers that the state moved, so they re-evaluate the drift;
    `UnsafeBrownianPath` draws its increments from the step's end points, as in `diffeqsolve`.
    """
    num = taus.shape[0] - 1
    keys = jax.random.split(jax.random.fold_in(key, 1), num + 2)
    x = projection(keys[0], x, sde.T - taus[0])
    solver_state = solver.init(terms, taus[0], taus[1], x, None)

    def step(carry, inputs):
        x, solver_state = carry
        tau0, tau1, k = inputs
        x, _, _, solver_state, _ = solver.step(terms, tau0, tau1, x, None, solver_state, True)
        return projection(k, x, sde.T - tau1), solver_state

    xs = (taus[:-1], taus[1:], keys[1:-1])
    (x, _), saved = _scan(step, (x, solver_state), xs, sde.T - taus, save)
    x = _denoise(score_fn, sde, x, t_eps)
    x = projection(keys[-1], x, jnp.zeros((), x.dtype))
    return x, saved, jnp.asarray(num)


# ---------------------------------------------------------------- predictor-corrector
def predictor_corrector(
    key,
    score_fn: Callable,
    sde: AbstractSDE,
    shape,
    *,
    num_steps: int = 500,
    corrector_steps: int = 1,
    snr: float = 0.16,
    predictor: str = "reverse_diffusion",
    norm: str = "batch",
    t_eps: float = 1e-3,
    save_times: ArrayLike | None = None,
    projection: Callable | None = None,
):
    """Predictor-corrector sampling (Song et al. 2021, arXiv:2011.13456, Algorithm 1, PC).

    On the uniform grid `T = t_N > ... > t_0 = t_eps`, each step is one predictor move
    `t_i -> t_{i-1}` followed by `corrector_steps` Langevin corrector steps at `t_{i-1}`
    (`langevin.langevin_corrector`, step `eps = 2 alpha (snr |z| / |s|)^2`, norms batch-averaged
    or per example (`norm`; per-example steps are biased, see `langevin_corrector`),
    `alpha = (mean_coeff(t_i) / mean_coeff(t_{i-1}))^2 = A^2`, i.e. `1 - beta_i` for VP, `1` for VE);
    then the Tweedie denoising step at `t_eps`.

    Predictors, with `A = mean_coeff(t_i) / mean_coeff(t_{i-1})` and
    `G^2 = std(t_i)^2 - A^2 std(t_{i-1})^2` the exact one-step forward transition:
    `"reverse_diffusion"`: `x <- (2 - A) x + G^2 s(x, t_i) + G z` (Song et al.'s reverse
    diffusion predictor); `"euler_maruyama"`: `x <- x - [f - g^2 s] dt + g sqrt(dt) z`.

    With `projection(key, x, t) -> x` (e.g. `guidance.inpainting_projection`), the state is
    projected at `T` before the first step, after each predictor and after each step's
    correctors (at the new time `t_{i-1}`), and at `t = 0` after the denoising step, as in
    Song et al.'s PC inpainter.

    Returns:
        `(x0 [B, *event], info)`, `info["nfe"] = num_steps (1 + corrector_steps) + 1`.
    """
    key = check_key(key)
    sde = _check_sde(sde)
    shape = check_shape(shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    if isinstance(corrector_steps, bool) or not isinstance(corrector_steps, (int, np.integer)):
        raise TypeError(f"`corrector_steps` must be an int, got {type(corrector_steps).__name__}.")
    if corrector_steps < 0:
        raise ValueError(f"`corrector_steps` must be >= 0, got {corrector_steps}.")
    snr = check_positive_float(snr, "snr")
    check_choice(predictor, "predictor", ("reverse_diffusion", "euler_maruyama"))
    check_choice(norm, "norm", NORMS)
    t_eps = check_t_eps(t_eps, sde.T)
    save_times = _check_save_times(save_times, t_eps, sde.T)
    check_model(score_fn, "score_fn", shape, _FLOAT)
    _check_projection(projection, key, shape, _FLOAT)
    grid = np.linspace(sde.T, t_eps, num_steps + 1)
    x, saved = _predictor_corrector(
        key, score_fn, sde, shape, jnp.asarray(grid, _FLOAT), int(corrector_steps), snr,
        predictor, norm, save_times, projection,
    )  # fmt: skip
    nfe = num_steps * (1 + int(corrector_steps)) + 1
    return x, _with_trajectory({"nfe": nfe}, saved)


@eqx.filter_jit
def _predictor_corrector(
    key, score_fn, sde, shape, grid, corrector_steps, snr, predictor, norm, save_times, projection
):
    prior_key, key = jax.random.split(key)
    x = sde.prior_sample(prior_key, shape)
    x = _project(projection, jax.random.fold_in(prior_key, 1), x, grid[0])
    batch = shape[:1]

    def step(carry, inputs):
        (x,) = carry
        t, s, k = inputs
        pred_key, corr_key = jax.random.split(k)
        z = jax.random.normal(pred_key, shape, x.dtype)
        a_t, std_t = sde.marginal(t)
        a_s, std_s = sde.marginal(s)
        A = a_t / a_s
        if predictor == "reverse_diffusion":
            G2 = std_t**2 - A**2 * std_s**2
            x = (2.0 - A) * x + G2 * score_fn(x, jnp.full(batch, t)) + jnp.sqrt(G2) * z
        else:
            dt = t - s
            drift = sde.reverse_drift(score_fn, x, jnp.full(batch, t))
            x = x - drift * dt + sde.diffusion(t) * jnp.sqrt(dt) * z
        x = _project(projection, jax.random.fold_in(k, 1), x, s)

        def correct(x, ck):
            return langevin_corrector(ck, score_fn, x, s, snr=snr, alpha=A**2, norm=norm), None

        if corrector_steps:
            x = jax.lax.scan(correct, x, jax.random.split(corr_key, corrector_steps))[0]
            x = _project(projection, jax.random.fold_in(k, 2), x, s)
        return (x,)

    num = grid.shape[0] - 1
    xs = (grid[:-1], grid[1:], jax.random.split(key, num))
    (x,), saved = _scan(step, (x,), xs, grid, save_times)
    x = _denoise(score_fn, sde, x, grid[-1])
    return _project(projection, jax.random.fold_in(key, 1), x, jnp.zeros((), x.dtype)), saved


# ---------------------------------------------------------------- probability-flow ODE
def _ode_options(sde, t_eps, solver, rtol, atol, num_steps, max_steps):
    """Validate the shared ODE options; return `(t_eps, solver, controller-maker, max_steps)`."""
    sde = _check_sde(sde)
    t_eps = check_t_eps(t_eps, sde.T)
    max_steps = check_positive_int(max_steps, "max_steps")
    if num_steps is None:
        rtol, atol = check_positive_float(rtol, "rtol"), check_positive_float(atol, "atol")
        solver = dfx.Tsit5() if solver is None else solver
    else:
        num_steps = check_positive_int(num_steps, "num_steps")
        solver = dfx.Heun() if solver is None else solver
        max_steps = num_steps
    _check_solver(solver)
    if num_steps is None and not isinstance(solver, dfx.AbstractAdaptiveSolver):
        raise ValueError(
            f"`solver` {type(solver).__name__} cannot take adaptive steps; pass `num_steps`."
        )
    return t_eps, solver, rtol, atol, num_steps, max_steps


def _ode_nfe(solver, steps):
    init_evals, per_step = evals_per_step(solver)
    return init_evals + per_step * steps


@eqx.filter_jit
def _pf_ode(score_fn, sde, x, t0, t1, solver, rtol, atol, num_steps, max_steps, save):
    """Integrate the PF-ODE `dx/dt = f - g^2 s / 2` from `t0` to `t1` (either direction)."""

    def drift(t, y, args):
        return sde.probability_flow_drift(score_fn, y, t)

    if num_steps is None:
        controller = dfx.PIDController(rtol=rtol, atol=atol)
        dt0 = (t1 - t0) / 64
    else:
        controller = dfx.ConstantStepSize()
        dt0 = (t1 - t0) / num_steps
    saveat = dfx.SaveAt(t1=True) if save is None else dfx.SaveAt(t1=True, ts=jnp.asarray(save))
    sol = dfx.diffeqsolve(
        dfx.ODETerm(drift),
        solver,
        t0,
        t1,
        dt0,
        x,
        saveat=saveat,
        stepsize_controller=controller,
        max_steps=max_steps,
    )
    saved = None if save is None else (sol.ys[:-1], sol.ts[:-1])
    return sol.ys[-1], saved, sol.stats["num_steps"]


def ode(
    key,
    score_fn: Callable,
    sde: AbstractSDE,
    shape,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: dfx.AbstractSolver | None = None,
    t_eps: float = 1e-3,
    num_steps: int | None = None,
    max_steps: int = 4096,
    save_times: ArrayLike | None = None,
):
    """Probability-flow ODE sampler: `x_T ~ p_T`, then `dx/dt = f(x, t) - g(t)^2 s(x, t) / 2`.

    Song et al. 2021 (arXiv:2011.13456, eq. 13), integrated by `diffrax.diffeqsolve` from `T` to
    `t_eps` (adaptive `PIDController(rtol, atol)` with `Tsit5()` by default; fixed-step `Heun()`
    when `num_steps` is given), then the Tweedie denoising step. Deterministic given `key` (the
    key only draws `x_T`).

    Args:
        save_times: optional times in `[t_eps, T]`; `info["trajectory"]` holds the (not denoised)
            states there, from the solver's dense output.

    Returns:
        `(x0 [B, *event], info)`, `info["nfe"]` (scalar array, including the denoising step)
        and `info["num_steps"]`.
    """
    key = check_key(key)
    shape = check_shape(shape)
    t_eps, solver, rtol, atol, num_steps, max_steps = _ode_options(
        sde, t_eps, solver, rtol, atol, num_steps, max_steps
    )
    save_times = _check_save_times(save_times, t_eps, sde.T)
    check_model(score_fn, "score_fn", shape, _FLOAT)
    x, saved, steps = _ode(
        key, score_fn, sde, shape, t_eps, solver, rtol, atol, num_steps, max_steps, save_times
    )
    info = {"nfe": _ode_nfe(solver, steps) + 1, "num_steps": steps}
    return x, _with_trajectory(info, saved)


@eqx.filter_jit
def _ode(key, score_fn, sde, shape, t_eps, solver, rtol, atol, num_steps, max_steps, save):
    x = sde.prior_sample(key, shape)
    x, saved, steps = _pf_ode(
        score_fn, sde, x, sde.T, t_eps, solver, rtol, atol, num_steps, max_steps, save
    )
    return _denoise(score_fn, sde, x, t_eps), saved, steps


def _check_data(x, name: str):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"`{name}` must be a float array, got dtype {x.dtype}.")
    check_shape(x.shape, f"{name}.shape")
    return x


def _transport(score_fn, sde, y, name, forward, rtol, atol, solver, t_eps, num_steps, max_steps):
    """Carry `y` along the PF-ODE between `t_eps` and `T` (up when `forward`), no noise."""
    y = _check_data(y, name)
    t_eps, solver, rtol, atol, num_steps, max_steps = _ode_options(
        sde, t_eps, solver, rtol, atol, num_steps, max_steps
    )
    check_model(score_fn, "score_fn", tuple(y.shape), _FLOAT)
    t0, t1 = (t_eps, sde.T) if forward else (sde.T, t_eps)
    out, _, steps = _pf_ode(
        score_fn, sde, y, t0, t1, solver, rtol, atol, num_steps, max_steps, None
    )
    return out, {"nfe": _ode_nfe(solver, steps), "num_steps": steps}


def encode(
    score_fn: Callable,
    sde: AbstractSDE,
    x: ArrayLike,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: dfx.AbstractSolver | None = None,
    t_eps: float = 1e-3,
    num_steps: int | None = None,
    max_steps: int = 4096,
):
    """Map data to latents along the PF-ODE, from `t_eps` up to `T` (no noise, invertible).

    `x` is taken as the state at `t_eps`. Returns `(z [B, *event], info)` with `info["nfe"]`.
    `decode(score_fn, sde, encode(score_fn, sde, x)[0])[0]` returns `x` up to the solver tolerance.
    """
    return _transport(score_fn, sde, x, "x", True, rtol, atol, solver, t_eps, num_steps, max_steps)


def decode(
    score_fn: Callable,
    sde: AbstractSDE,
    z: ArrayLike,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: dfx.AbstractSolver | None = None,
    t_eps: float = 1e-3,
    num_steps: int | None = None,
    max_steps: int = 4096,
):
    """Map latents at `T` to the PF-ODE state at `t_eps` (the inverse of `encode`; no denoising).

    Returns `(x [B, *event], info)` with `info["nfe"]`.
    """
    return _transport(score_fn, sde, z, "z", False, rtol, atol, solver, t_eps, num_steps, max_steps)


# ---------------------------------------------------------------- DPM-Solver++
def dpm_solver(
    key,
    eps_fn: Callable,
    sde: VPSDE,
    shape,
    *,
    num_steps: int = 20,
    order: int = 2,
    t_eps: float = 1e-3,
    spacing: str = "logsnr",
    lower_order_final: bool = True,
    save_times: ArrayLike | None = None,
):
    """DPM-Solver++ multistep in data-prediction form (Lu et al. 2022, arXiv:2211.01095, Alg. 2).

    With `lambda = log(mean_coeff / std)` (`sde.log_snr`), `h_i = lambda_i - lambda_{i-1}`,
    `x0_i = (x - std eps(x, t_i)) / mean_coeff` and `phi_1 = expm1(-h)`, the order-1 step is
    `x_i = (std_i / std_{i-1}) x_{i-1} - mean_coeff_i phi_1 x0_{i-1}` (DDIM); orders 2 and 3 add
    finite differences of the previous `x0` predictions (multistep 2M/3M). The first steps warm
    up at lower order; with `lower_order_final` the order at step `i` of `N` is
    `min(order, i, N - i + 1)` (the last step is first order). The grid `T = t_0 > ... > t_N =
    t_eps` is uniform in `lambda` (`spacing="logsnr"`, times from `VPSDE.t_from_log_snr`) or in
    `t` (`"time"`). The output is the final denoising step to `std = 0`, `x0(x_N, t_eps)`.

    Only `VPSDE` is supported (the grid inverts its `log_snr`).

    Returns:
        `(x0 [B, *event], info)`, `info["nfe"] = num_steps + 1`.
    """
    key = check_key(key)
    if isinstance(sde, AbstractSDE) and not isinstance(sde, VPSDE):
        raise TypeError(
            f"`sde` must be a VPSDE for dpm_solver (it inverts VPSDE.log_snr); got "
            f"{type(sde).__name__}. Use `ode` or `reverse_sde` for other SDEs."
        )
    sde = _check_sde(sde, VPSDE)
    shape = check_shape(shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    check_choice(order, "order", (1, 2, 3))
    check_choice(spacing, "spacing", ("logsnr", "time"))
    t_eps = check_t_eps(t_eps, sde.T)
    save_times = _check_save_times(save_times, t_eps, sde.T)
    check_model(eps_fn, "eps_fn", shape, _FLOAT)
    i = np.arange(1, num_steps + 1)
    orders = np.minimum(order, i)
    if lower_order_final:
        orders = np.minimum(orders, num_steps - i + 1)
    x, saved = _dpm_solver(
        key, eps_fn, sde, shape, num_steps, t_eps, spacing, jnp.asarray(orders - 1), int(order),
        save_times,
    )  # fmt: skip
    return x, _with_trajectory({"nfe": num_steps + 1}, saved)


@eqx.filter_jit
def _dpm_solver(key, eps_fn, sde, shape, num_steps, t_eps, spacing, order_index, order, save):
    T = sde.T
    if spacing == "logsnr":
        lam = jnp.linspace(
            sde.log_snr(jnp.asarray(T)), sde.log_snr(jnp.asarray(t_eps)), num_steps + 1
        )
        ts = sde.t_from_log_snr(lam).at[0].set(T).at[-1].set(t_eps)
    else:
        ts = jnp.linspace(T, t_eps, num_steps + 1, dtype=_FLOAT)
    lam = sde.log_snr(ts)
    a, s = sde.marginal(ts)
    x = sde.prior_sample(key, shape)
    batch = shape[:1]

    def data_pred(x, i):
        return (x - s[i] * eps_fn(x, jnp.full(batch, ts[i]))) / a[i]

    def step(carry, inputs):
        x, m1, m2, h1, h2 = carry
        i, k = inputs  # step from t_{i-1} to t_i
        m0 = data_pred(x, i - 1)
        h = lam[i] - lam[i - 1]
        phi1 = jnp.expm1(-h)
        base = (s[i] / s[i - 1]) * x

        def first(_):
            return base - a[i] * phi1 * m0

        def second(_):
            d1 = (m0 - m1) / (h1 / h)
            return base - a[i] * phi1 * (m0 + 0.5 * d1)

        def third(_):
            r0, r1 = h1 / h, h2 / h
            d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            return base - a[i] * phi1 * m0 + a[i] * phi2 * d1 - a[i] * phi3 * d2

        x_new = jax.lax.switch(k, (first, second, third)[:order], None)
        return x_new, m0, m1, h, h1

    zeros = jnp.zeros_like(x)
    one = jnp.ones((), lam.dtype)
    carry = (x, zeros, zeros, one, one)
    xs = (jnp.arange(1, num_steps + 1), order_index)
    (x, *_), saved = _scan(step, carry, xs, ts, save)
    return data_pred(x, num_steps), saved
