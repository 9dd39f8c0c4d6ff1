"""A 1-D Fokker–Planck solver on a uniform grid (notes, topic 4).

The density `p_t(x)` of `dx = f(x, t) dt + g(t) dW` obeys

    dp/dt = -d/dx (f(x, t) p) + 1/2 g(t)^2 d^2p/dx^2 = -dJ/dx,
    J = f p - D dp/dx,   D(t) = g(t)^2 / 2

(the notes drop the square on `g` once; see DESIGN.md, "Known errata"). We discretise it by
finite volumes: `N` cells of width `h` centred on `grid`, the flux `J` evaluated on the
`N - 1` interior faces `x_{i+1/2} = grid[i] + h/2` and set to zero on the two boundary faces, so

    dp_i/dt = -(J_{i+1/2} - J_{i-1/2}) / h.

The sum `h sum_i p_i` telescopes: total mass is conserved exactly by the semi-discrete system
and, since it is a linear invariant, by any Runge–Kutta method up to rounding.

Face flux: Scharfetter–Gummel (exponential fitting; Scharfetter & Gummel 1969, IEEE Trans.
Electron Devices 16(1)), written as a centred flux with an effective diffusion,

    J_{i+1/2} = v (p_i + p_{i+1}) / 2 - D_eff (p_{i+1} - p_i) / h,
    D_eff = D Pe/2 coth(Pe/2),   Pe = v h / D,   v = f(x_{i+1/2}, t).

It is centred (second order) where diffusion dominates, tends to upwinding where advection
dominates (`D_eff -> |v| h / 2`, including `g(t) = 0`), and has `D_eff >= |v| h / 2`, so the
semi-discrete system keeps `p >= 0` (its off-diagonal coefficients are non-negative). It is
exact for the stationary profile when `f / D` is constant across a face. Adaptive time
stepping can still produce negative values of the order of the solver tolerance `atol`; they
are returned as they are, nothing is clipped.

Time stepping is a method of lines through `diffrax.diffeqsolve`, by default `diffrax.Tsit5`
with a PI step-size controller. The diffusion term makes the system stiff (eigenvalues up to
`4 D / h^2`, about `4e4` for the VP SDE with `beta_max = 20` on 400 cells over `[-6, 6]`), so the
explicit method is stability-limited: its step count grows like `D T / h^2` (VP, `t` in `[0, 1]`:
about 7e3 steps for 400 cells, 3e4 for 800), but each step is a few vector operations. The
implicit `diffrax.Kvaerno5` (dense Newton/chord solves) does not work in float32 here: its
chord iteration cannot reach the step controller's tolerance at float32 resolution, rejects
most steps and runs out of `max_steps`; pass `solver=` to try it under `jax_enable_x64`.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from diffjax._checks import (
    as_float_array,
    check_controller,
    check_positive_int,
    check_solver,
    is_concrete,
    reraise_solver_error,
)
from diffjax.processes import AbstractProcess

__all__ = ["solve_1d", "solve_sde_1d"]


_DEFAULT_CONTROLLER = diffrax.PIDController(rtol=1e-5, atol=1e-7, pcoeff=0.3, icoeff=0.4)


def _effective_diffusion(v: Array, d: Array, h: Array) -> Array:
    """Scharfetter–Gummel `D_eff = D x coth(x)`, `x = |v| h / (2 D)`; `|v| h / 2` when `D = 0`."""
    a = 0.5 * jnp.abs(v) * h
    x = jnp.where(d > 0, a / jnp.where(d > 0, d, 1.0), jnp.inf)
    large = x > 1e-3
    x_large = jnp.where(large, x, 1.0)
    x_small = jnp.where(large, 0.0, x)
    return jnp.where(large, a / jnp.tanh(x_large), d * (1.0 + x_small**2 / 3.0))


class _FokkerPlanckField(eqx.Module):
    """Method-of-lines right-hand side `dp/dt = -(J_{i+1/2} - J_{i-1/2}) / h` with zero-flux ends."""

    drift: Callable
    diffusion: Callable
    faces: Array
    h: Array

    def __call__(self, t, p, args):
        v = jnp.broadcast_to(self.drift(self.faces, t), self.faces.shape).astype(p.dtype)
        d = (0.5 * self.diffusion(t) ** 2).astype(p.dtype)
        d_eff = _effective_diffusion(v, d, self.h)
        flux = v * 0.5 * (p[:-1] + p[1:]) - d_eff * (p[1:] - p[:-1]) / self.h
        zero = jnp.zeros((1,), p.dtype)
        flux = jnp.concatenate([zero, flux, zero])
        return -(flux[1:] - flux[:-1]) / self.h


def _check_grid(grid: ArrayLike) -> Array:
    grid = as_float_array(grid, "grid")
    if grid.ndim != 1 or grid.shape[0] < 3:
        raise ValueError(
            f"`grid` must be a 1-D array of at least 3 cell centres, got {grid.shape}."
        )
    if is_concrete(grid):
        g = np.asarray(grid, dtype=np.float64)
        steps = np.diff(g)
        h = (g[-1] - g[0]) / (g.shape[0] - 1)
        if not np.all(np.isfinite(g)) or not np.all(steps > 0):
            raise ValueError("`grid` must be finite and strictly increasing.")
        tol = 1e-4 * h + 8 * np.finfo(np.asarray(grid).dtype).eps * np.max(np.abs(g))
        if np.max(np.abs(steps - h)) > tol:
            raise ValueError(
                f"`grid` must be uniform (cell centres with a constant spacing h = {h:.6g}); "
                f"spacings range over [{steps.min():.6g}, {steps.max():.6g}]."
            )
    return grid


def _check_p0(p0: ArrayLike, grid: Array) -> Array:
    p0 = as_float_array(p0, "p0")
    if p0.shape != grid.shape:
        raise ValueError(f"`p0` must have the shape of `grid` {grid.shape}, got {p0.shape}.")
    if is_concrete(p0):
        p = np.asarray(p0)
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise ValueError(
                f"`p0` must be a finite non-negative density on the grid; min {p.min():.3g}."
            )
    return p0


def _check_ts(ts: ArrayLike) -> Array:
    ts = as_float_array(ts, "ts")
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"`ts` must be a 1-D array of at least 2 times, got shape {ts.shape}.")
    if is_concrete(ts):
        t = np.asarray(ts)
        if not np.all(np.isfinite(t)) or not np.all(np.diff(t) > 0):
            raise ValueError(f"`ts` must be finite and strictly increasing, got {t}.")
    return ts


def _check_coefficients(drift, diffusion, faces: Array, t0: Array) -> None:
    if not callable(drift):
        raise TypeError(f"`drift` must be a callable drift(x, t), got {type(drift).__name__}.")
    if not callable(diffusion):
        raise TypeError(
            f"`diffusion` must be a callable diffusion(t), got {type(diffusion).__name__}."
        )
    try:
        v = jax.eval_shape(drift, faces, t0)
    except Exception as err:  # the user's own error, re-raised naming the argument
        raise ValueError(
            f"`drift(x, t)` could not be evaluated on x of shape {faces.shape} and a scalar t: "
            f"{type(err).__name__}: {err}"
        ) from err
    if v.shape not in ((), faces.shape):
        raise ValueError(
            f"`drift(x, t)` must act elementwise and return shape {faces.shape} for x of that "
            f"shape (or a scalar), got {v.shape}."
        )
    try:
        g = jax.eval_shape(diffusion, t0)
    except Exception as err:
        raise ValueError(
            f"`diffusion(t)` could not be evaluated on a scalar t: {type(err).__name__}: {err}"
        ) from err
    if g.shape != ():
        raise ValueError(f"`diffusion(t)` must return a scalar, got shape {g.shape}.")


def solve_1d(
    drift: Callable,
    diffusion: Callable,
    p0: ArrayLike,
    grid: ArrayLike,
    ts: ArrayLike,
    *,
    solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    max_steps: int = 200_000,
) -> Array:
    """Solve `dp/dt = -d/dx (f p) + 1/2 g(t)^2 d^2p/dx^2` on a uniform grid with zero-flux ends.

    The solve starts at `ts[0]` from `p0` and returns the density at every time in `ts`
    (so `p[0] == p0`). Finite volumes with the Scharfetter–Gummel face flux (see the module
    docstring); `h sum_i p_i` is conserved up to rounding and the solver's linear-solve tolerance.
    `p0` is used as given: normalise it (`p0 / (h p0.sum())`) if a unit mass is wanted.

    Args:
        drift: `f(x, t)`, elementwise over `x: [M]` (evaluated on the `M = N - 1` interior faces
            `grid[:-1] + h/2`) with a scalar `t`; returns `[M]` (or a scalar).
        diffusion: `g(t)` for a scalar `t`, returns a scalar.
        p0: `[N]` non-negative initial density at the cell centres.
        grid: `[N]` uniformly spaced, increasing cell centres (`N >= 3`); cell width
            `h = grid[1] - grid[0]`. Mass leaving the interval is not modelled: pick it wide
            enough that `p` is negligible at both ends.
        ts: `[S]` strictly increasing times, `S >= 2`.
        solver: a `diffrax` ODE solver; default `diffrax.Tsit5()`.
        stepsize_controller: default `diffrax.PIDController(rtol=1e-5, atol=1e-7, pcoeff=0.3,
            icoeff=0.4)` (the PI terms cut rejected steps on this stability-limited problem).
        max_steps: step budget of `diffeqsolve`; raise it for fine grids or large `g`.

    Returns:
        `[S, N]`: `p_{ts[k]}` at the cell centres.
    """
    grid = _check_grid(grid)
    p0 = _check_p0(p0, grid)
    ts = _check_ts(ts)
    h = (grid[-1] - grid[0]) / (grid.shape[0] - 1)
    faces = grid[:-1] + 0.5 * h
    _check_coefficients(drift, diffusion, faces, ts[0])
    solver = check_solver(solver, diffrax.Tsit5())
    stepsize_controller = check_controller(stepsize_controller, _DEFAULT_CONTROLLER)
    max_steps = check_positive_int(max_steps, "max_steps")
    field = _FokkerPlanckField(drift, diffusion, faces, h)
    try:
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            solver,
            t0=ts[0],
            t1=ts[-1],
            dt0=None,
            y0=p0,
            saveat=diffrax.SaveAt(ts=ts),
            stepsize_controller=stepsize_controller,
            max_steps=max_steps,
        )
    except Exception as err:
        reraise_solver_error(err, max_steps)
    return sol.ys


class _SDEDrift(eqx.Module):
    """`f(x, t)` of a scalar SDE as an elementwise function of `x: [M]`."""

    sde: AbstractProcess

    def __call__(self, x, t):
        return self.sde.drift(x[:, None], t)[:, 0]


def solve_sde_1d(
    sde: AbstractProcess, p0: ArrayLike, grid: ArrayLike, ts: ArrayLike, **kwargs
) -> Array:
    """`solve_1d` for the forward process of a `diffjax.sde` SDE acting on scalars.

    `ts` must lie in `[0, sde.T]`; keyword arguments go to `solve_1d`. With `ts[0] = 0` and
    `p0` a density of `x_0`, row `k` is the marginal `p_{ts[k]}` of `x_t = mean_coeff x_0 + std eps`.
    """
    if not isinstance(sde, AbstractProcess):
        raise TypeError(f"`sde` must be a diffjax process (VPSDE, ...), got {type(sde).__name__}.")
    ts = _check_ts(ts)
    if is_concrete(ts) and (np.asarray(ts)[0] < 0.0 or np.asarray(ts)[-1] > sde.T * (1 + 1e-6)):
        raise ValueError(f"`ts` must lie in [0, T] = [0, {sde.T}], got {np.asarray(ts)}.")
    return solve_1d(_SDEDrift(sde), sde.diffusion, p0, grid, ts, **kwargs)
