"""The reverse-time SDE through diffrax, and predictor-corrector sampling (notes, topic 3).

Song et al. 2021 (arXiv:2011.13456): `dx = [f(x, t) - g(t)^2 s(x, t)] dt + g(t) dW` from
`t_max` down to `t_eps`, with `f`, `g` of the model's process and `s = model.score`.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

from diffjax._checks import (
    check_choice,
    check_controller,
    check_int,
    check_knob,
    check_positive_int,
    check_solver,
    check_times,
    is_concrete,
    reraise_solver_error,
)
from diffjax._typing import Batch, Int, Key, Scalar, Shape, Values
from diffjax.langevin import NORMS, corrector_update
from diffjax.model import Model
from diffjax.processes import AbstractProcess
from diffjax.samplers import _driver as drv

__all__ = ["predictor_corrector", "reverse_sde"]


def _levy_area(solver):
    """The cheapest Brownian increment type the solver accepts."""
    minimal = getattr(solver, "minimal_levy_area", dfx.BrownianIncrement)
    for cls in (dfx.BrownianIncrement, dfx.SpaceTimeLevyArea, dfx.SpaceTimeTimeLevyArea):
        if issubclass(cls, minimal):
            return cls
    raise TypeError(f"`solver` needs an unsupported Brownian path: {minimal.__name__}.")


def _host_grid(process, num_steps, grid, t_eps, t_max, rho, save_times):
    """The decreasing time grid with the save times merged in (so the solver lands on them).

    Computed now when `t_eps` and `t_max` are concrete, also inside an outer `jit`: the Brownian
    increments are keyed on the step times, so the same key then gives the same samples.
    """
    concrete = is_concrete(t_eps) and is_concrete(t_max) and is_concrete(rho)
    if save_times is not None and not concrete:
        raise TypeError("`save_times` with a traced `t_eps` or `t_max` is not supported.")
    ts = drv.time_grid(process, num_steps, grid, t_eps, t_max, rho)
    if save_times is None:
        return ts
    ts = np.asarray(ts)
    merged = np.unique(np.concatenate([ts, save_times]))[::-1]
    return jnp.asarray(merged[np.concatenate([[True], np.diff(merged) < -1e-9 * ts[0]])])


def reverse_sde(
    key: Key,
    model: Model,
    shape: Shape,
    *,
    num_steps: Int = 1000,
    grid: str = "logsnr",
    rho: Scalar = 7.0,
    solver: dfx.AbstractSolver | None = None,
    stepsize_controller: dfx.AbstractStepSizeController | None = None,
    t_eps: Scalar | None = None,
    t_max: Scalar | None = None,
    max_steps: Int = 16384,
    process: AbstractProcess | None = None,
    save_times: Values | None = None,
    projection: Callable | None = None,
) -> tuple[Batch, drv.SamplerInfo]:
    """The reverse-time SDE `dx = [f - g^2 s] dt + g dW` from `t_max` to `t_eps`, then denoising.

    Song et al. 2021 (arXiv:2011.13456, eq. 6). diffrax integrates it forward in
    `tau = t_max - t` (diffrax 0.7's stochastic Runge-Kutta solvers flip the drift of a
    `t0 > t1` solve), the batch as one state, `x_T ~ p_T`; the output is `model.x0(x, t_eps)`.
    The noise is additive, so `diffrax.Euler()` (Euler-Maruyama, default), `Heun()`, `SEA()`,
    `ShARK()`, `SRA1()` apply (each gets the Brownian increments it needs).

    Fixed steps (default): the `grid` (`"logsnr"` default, `"time"`, `"karras"`) with `num_steps`
    steps plus the `save_times`, a `diffrax.UnsafeBrownianPath`, and the solver's steps in one
    `lax.scan` (the same samples as `diffeqsolve` with `StepTo`, from a program that compiles
    in half the time: no step-size controller or saving machinery).
    Adaptive: pass an adaptive `stepsize_controller` (e.g. `diffrax.PIDController(rtol=1e-3,
    atol=1e-3, dtmin=1e-4)`) and a solver with an error estimate (e.g. `ShARK()`); the Brownian
    path is then a `VirtualBrownianTree`. Under `vmap` over keys an adaptive solve takes each
    example's own steps, while a batch shares one step size (chosen by the whole state's error):
    the two agree in distribution, not sample by sample.

    Args:
        key: a JAX PRNG key.
        model: a `Model` on a continuous process, of any prediction kind.
        shape: `[B, *event]`.
        solver, stepsize_controller: diffrax objects, passed through.
        max_steps: the solver's step budget (raise it if an adaptive solve runs out).
        save_times: optional times in `[t_eps, t_max]`: `info.trajectory` holds the state
            exactly there (the solver steps to them).
        projection: optional `projection(key, x, t) -> x` (fixed steps only), e.g.
            `guidance.inpainting_projection`: applied to `x_T`, after every solver step and at
            `t = 0` after denoising; the solve then runs as one `lax.scan` of `solver.step`s on
            the same grid and Brownian path.

    Returns:
        `(x0 [B, *event], info)`: `info.nfe` (steps times evaluations per step, plus 1 for
        denoising), `info.num_steps`.
    """
    key, shape = drv.check_common(key, shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    max_steps = check_positive_int(max_steps, "max_steps")
    rho = drv.check_grid(grid, rho)
    model = drv.check_model(model, shape, continuous=True, process=process)
    t_eps, t_max = check_times(model.process, t_eps, t_max)
    controller = check_controller(stepsize_controller, None) if stepsize_controller else None
    adaptive = isinstance(controller, dfx.AbstractAdaptiveStepSizeController)
    solver = check_solver(solver, dfx.ShARK() if adaptive else dfx.Euler(), fixed_steps=not adaptive)
    save_times = drv.check_save_times(save_times, t_eps, t_max)
    if projection is not None and adaptive:
        raise ValueError("`projection` needs fixed steps: leave `stepsize_controller` unset.")
    drv.check_projection(projection, key, shape, t_eps.dtype)
    if adaptive:
        if save_times is not None and isinstance(controller, dfx.PIDController):
            controller = eqx.tree_at(
                lambda c: c.step_ts, controller, jnp.asarray(t_max - save_times),
                is_leaf=lambda v: v is None,
            )  # fmt: skip
        ts = None
    else:
        ts = _host_grid(model.process, num_steps, grid, t_eps, t_max, rho, save_times)
        max_steps = ts.shape[0] - 1
    try:
        x, saved, steps = _reverse_sde(
            key, model, shape, solver, controller, ts, t_eps, t_max, max_steps, save_times,
            projection,
        )  # fmt: skip
    except Exception as err:
        reraise_solver_error(err, max_steps)
    init_evals, per_step = drv.evals_per_step(solver, _levy_area(solver))
    if projection is not None:  # FSAL: the first stage is re-evaluated after every projection
        per_step = init_evals + per_step
    return drv.result(x, init_evals + per_step * steps + 1, steps, saved)


@eqx.filter_jit
def _reverse_sde(
    key, model, shape, solver, controller, ts, t_eps, t_max, max_steps, save, projection
):
    process = model.process
    prior_key, bm_key = jax.random.split(key)
    x = process.prior_sample(prior_key, shape)
    levy_area = _levy_area(solver)
    tau1 = t_max - t_eps
    if ts is None:
        tol = tau1 / (4 * max_steps)
        bm = dfx.VirtualBrownianTree(0.0, tau1, tol, shape, bm_key, levy_area=levy_area)
    else:
        bm = dfx.UnsafeBrownianPath(shape, bm_key, levy_area=levy_area)

    def drift(tau, y, args):
        t = t_max - tau
        return -process.reverse_drift(model.score(y, t), y, t)

    def diffusion(tau, y, args):
        return lx.DiagonalLinearOperator(jnp.broadcast_to(process.diffusion(t_max - tau), y.shape))

    terms = dfx.MultiTerm(dfx.ODETerm(drift), dfx.ControlTerm(diffusion, bm))
    batch = shape[:1]
    if ts is not None:
        return _fixed_step_sde(key, model, x, solver, terms, t_max - ts, t_max, projection, save)
    saveat = dfx.SaveAt(t1=True)
    if save is not None:
        saveat = dfx.SaveAt(t1=True, ts=jnp.asarray(t_max - save))
    sol = dfx.diffeqsolve(
        terms, solver, 0.0, tau1, dt0=tau1 / 64, y0=x, saveat=saveat,
        stepsize_controller=controller, adjoint=dfx.RecursiveCheckpointAdjoint(),
        max_steps=max_steps,
    )  # fmt: skip
    x = model.x0(sol.ys[-1], jnp.full(batch, t_eps))
    saved = None if save is None else (sol.ys[:-1], t_max - sol.ts[:-1])
    return x, saved, sol.stats["num_steps"]


def _fixed_step_sde(key, model, x, solver, terms, taus, t_max, projection, save):
    """The fixed-step solve on the grid `taus` (in `tau`, `drv.solve_fixed`), then the denoising
    `x0(x, t_eps)`; with a `projection`, `x = projection(key_i, x, t_max - tau_{i+1})` after each
    step and at both ends. `UnsafeBrownianPath` draws its increments from the step's end points,
    as in `diffeqsolve` with `StepTo`: the same samples."""
    num = taus.shape[0] - 1
    keys = jax.random.split(jax.random.fold_in(key, 1), num + 2)
    x = drv.project(projection, keys[0], x, t_max - taus[0])
    after = None if projection is None else (lambda k, x, tau: projection(k, x, t_max - tau))
    x, saved = drv.solve_fixed(solver, terms, taus, x, t_max - taus, save, after, keys[1:-1])
    x = model.x0(x, jnp.full(x.shape[:1], t_max - taus[-1]))
    x = drv.project(projection, keys[-1], x, jnp.zeros((), x.dtype))
    return x, saved, jnp.asarray(num)


def predictor_corrector(
    key: Key,
    model: Model,
    shape: Shape,
    *,
    num_steps: Int = 500,
    corrector_steps: Int = 1,
    snr: Scalar = 0.16,
    predictor: str = "reverse_diffusion",
    norm: str = "batch",
    grid: str = "logsnr",
    rho: Scalar = 7.0,
    t_eps: Scalar | None = None,
    t_max: Scalar | None = None,
    process: AbstractProcess | None = None,
    save_times: Values | None = None,
    projection: Callable | None = None,
) -> tuple[Batch, drv.SamplerInfo]:
    """Predictor-corrector sampling (Song et al. 2021, arXiv:2011.13456, Algorithm 1, PC).

    On the grid `t_max = t_0 > ... > t_N = t_eps`, each step is one predictor move followed by
    `corrector_steps` Langevin corrector steps at the new time (`langevin.langevin_corrector`,
    step `2 alpha (snr |z| / |s|)^2` with `alpha = A^2`, norms batch-averaged or per example),
    then the denoising step `model.x0(x, t_eps)`.

    Predictors, with `A = alpha(t) / alpha(s)` and `G^2 = sigma(t)^2 - A^2 sigma(s)^2` the exact
    one-step forward transition from `s` to `t > s`: `"reverse_diffusion"`:
    `x <- (2 - A) x + G^2 s(x, t) + G z`; `"euler_maruyama"`: `x <- x - [f - g^2 s] dt + g sqrt(dt) z`.

    With `projection(key, x, t) -> x` the state is projected at `t_max`, after each predictor
    and each step's correctors (at the new time), and at `t = 0` after denoising.
    `snr` may be traced.

    Returns:
        `(x0 [B, *event], info)`, `info.nfe = num_steps (1 + corrector_steps) + 1`.
    """
    key, shape = drv.check_common(key, shape)
    num_steps = check_positive_int(num_steps, "num_steps")
    corrector_steps = check_int(corrector_steps, "corrector_steps")
    snr = check_knob(snr, "snr", 0.0)
    check_choice(predictor, "predictor", ("reverse_diffusion", "euler_maruyama"))
    check_choice(norm, "norm", NORMS)
    rho = drv.check_grid(grid, rho)
    model = drv.check_model(model, shape, continuous=True, process=process)
    t_eps, t_max = check_times(model.process, t_eps, t_max)
    save_times = drv.check_save_times(save_times, t_eps, t_max)
    drv.check_projection(projection, key, shape, t_eps.dtype)
    ts = drv.time_grid(model.process, num_steps, grid, t_eps, t_max, rho)
    x, saved = _predictor_corrector(
        key, model, shape, ts, int(corrector_steps), snr, predictor, norm, save_times, projection
    )
    return drv.result(x, num_steps * (1 + int(corrector_steps)) + 1, num_steps, saved)


@eqx.filter_jit
def _predictor_corrector(
    key, model, shape, ts, corrector_steps, snr, predictor, norm, save_times, projection
):
    """Algorithm 1 regrouped by time: after the first predictor (from `t_0`), step
    `i = 1..N` holds every evaluation at `t_i`, the correctors and then the predictor to
    `t_{i+1}` (the denoising step at `i = N`), in one inner loop whose time is loop-invariant,
    so XLA computes the network's time branch (embedding, per-layer conditioning) once per
    time, not once per evaluation. Every loop has a fixed length (reverse-differentiable)."""
    process = model.process
    prior_key, key = jax.random.split(key)
    x = process.prior_sample(prior_key, shape)
    x = drv.project(projection, jax.random.fold_in(prior_key, 1), x, ts[0])
    batch, M, num = shape[:1], corrector_steps, ts.shape[0] - 1
    a, std = process.marginal(ts)
    keys = jax.random.split(key, num + 1)

    def evaluate(i, k, j, inner):  # at t_i; j < M: a corrector, j = M: predictor or denoising
        x, _ = inner
        nxt = jnp.minimum(i + 1, num)  # at i = N the predictor's result is not used
        t, s, a_t, std_t = ts[i], ts[nxt], a[i], std[i]
        A, std_s = a_t / a[nxt], std[nxt]  # of the step to t_{i+1}
        kj = jax.random.fold_in(k, j)
        if M and projection is not None:  # the correctors' result, projected at t_i
            x = jnp.where(j == M, projection(jax.random.fold_in(kj, 1), x, t), x)
        x0, eps = model.x0_eps(x, jnp.full(batch, t))
        score = -eps / std_t
        z = jax.random.normal(kj, shape, x.dtype)
        if predictor == "reverse_diffusion":
            G2 = std_t**2 - A**2 * std_s**2
            x_next = (2.0 - A) * x + G2 * score + jnp.sqrt(G2) * z
        else:
            dt = t - s
            x_next = (
                x - process.reverse_drift(score, x, t) * dt + process.diffusion(t) * jnp.sqrt(dt) * z
            )
        x_next = drv.project(projection, jax.random.fold_in(kj, 2), x_next, s)
        x_next = jnp.where(i < num, x_next, x0)
        if M:  # the correctors' alpha: the squared mean factor of the step that reached t_i
            alpha = (a[i - 1] / a_t) ** 2
            x_next = jnp.where(j < M, corrector_update(x, score, z, snr, alpha, norm), x_next)
        return x_next, x

    def step(carry, inputs):  # carry: (x at t_{i-1} after its correctors, x entering t_i)
        _, x = carry
        i, k = inputs
        x_next, x_t = jax.lax.fori_loop(0, M + 1, lambda j, c: evaluate(i, k, j, c), (x, x))
        return x_t, x_next

    x_first, _ = evaluate(0, keys[0], M, (x, x))  # no corrector before the first predictor
    xs = (jnp.arange(1, num + 1), keys[1:])
    (_, x), saved = drv.scan_saving(step, (x, x_first), xs, ts, save_times)
    return drv.project(projection, jax.random.fold_in(key, 1), x, jnp.zeros((), x.dtype)), saved
