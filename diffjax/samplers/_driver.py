"""What every sampler shares: argument checks, the time grid, the prior draw, projections, saved
trajectories and the result type. Private; the public samplers call these at their boundary.
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable
from typing import NamedTuple

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from diffjax._checks import (
    abstract_output,
    as_real_array,
    cached,
    check_choice,
    check_key,
    check_knob,
    check_shape,
    is_concrete,
    value_key,
)
from diffjax.model import Model
from diffjax.processes import AbstractProcess

GRIDS = ("time", "logsnr", "karras")


class SamplerInfo(NamedTuple):
    """What a sampler reports besides the samples.

    Attributes:
        nfe: network evaluations (an int32 array; the final denoising step included).
        num_steps: solver steps taken (int32 array).
        trajectory: `[S, B, *event]` states (not denoised) at `times`, with `save_times`.
        times: `[S]` the times of `trajectory`, in sampling order (decreasing).
        finite: whether every sample is finite (a bool array): a NaN or inf produced inside the
            sampler (a diverging model, too large a step) is reported here, never silently.
    """

    nfe: Array
    num_steps: Array
    trajectory: Array | None = None
    times: Array | None = None
    finite: Array | None = None


def result(x: Array, nfe, num_steps, saved) -> tuple[Array, SamplerInfo]:
    traj, times = (None, None) if saved is None else saved
    info = SamplerInfo(
        jnp.asarray(nfe, jnp.int32), jnp.asarray(num_steps, jnp.int32), traj, times,
        jnp.all(jnp.isfinite(x)),
    )  # fmt: skip
    return x, info


# ---------------------------------------------------------------- checks
def check_model(model, shape: tuple[int, ...], *, continuous: bool, process=None) -> Model:
    """`model` must be a `Model` on the right kind of process whose output has the state's shape.

    With `process` given (a continuous process other than the model's), the model is moved to it
    by log-SNR matching (`Model.on`).
    """
    if not isinstance(model, Model):
        kind = (
            "a continuous process (VPSDE, EDM, RectifiedFlow, ...)"
            if continuous
            else ("a DiscreteSchedule")
        )
        raise TypeError(
            f"`model` must be a diffjax.Model on {kind}, got {type(model).__name__}; wrap a "
            "network as dj.Model(fn, process, prediction='eps' | 'x0' | 'score' | 'v' | 'velocity')."
        )
    if process is not None:
        if not isinstance(process, AbstractProcess):
            raise TypeError(
                f"`process` must be a continuous process, got {type(process).__name__}."
            )
        model = model.on(process)
    if continuous and not model.is_continuous:
        raise TypeError(
            "`model` must be on a continuous process for this sampler; it is on a "
            "DiscreteSchedule (use samplers.ddpm / samplers.ddim, or a continuous model)."
        )
    if not continuous and model.is_continuous:
        raise TypeError(
            f"`model` must be on a DiscreteSchedule for this sampler, got one on "
            f"{type(model.process).__name__} (use the continuous samplers)."
        )
    t_dtype = jnp.result_type(float) if continuous else jnp.int32
    out = _state_map_output("model", model, shape, (shape[:1], t_dtype))
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"`model` must return a real floating array, got dtype {out.dtype}.")
    return model


def check_common(key, shape) -> tuple[Array, tuple[int, ...]]:
    return check_key(key), check_shape(shape)


def check_save_times(save_times, lo, hi, *, integer: bool = False):
    """Concrete 1-D times in `[lo, hi]`, returned sorted decreasing (sampling order), or None."""
    if save_times is None:
        return None
    if not is_concrete(save_times):
        raise TypeError("`save_times` must be concrete (not traced): they fix the program's shape.")
    arr = as_real_array(save_times, "save_times", np)
    if integer and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"`save_times` must be integer steps for a schedule, got {arr.dtype}.")
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"`save_times` must be a non-empty 1-D array, got shape {arr.shape}.")
    lo_c, hi_c = (float(np.asarray(v)) if is_concrete(v) else None for v in (lo, hi))
    if (
        not np.all(np.isfinite(arr))
        or (lo_c is not None and arr.min() < lo_c * (1 - 1e-6))
        or (hi_c is not None and arr.max() > hi_c * (1 + 1e-6))
    ):
        raise ValueError(
            f"`save_times` must lie in [{lo_c}, {hi_c}], got [{arr.min()}, {arr.max()}]."
        )
    return np.sort(arr)[::-1].copy()


def check_projection(projection, key, shape: tuple[int, ...], t_dtype) -> None:
    """`projection(key, x, t) -> x` must be callable and keep the state's shape (checked abstractly)."""
    if projection is None:
        return
    if not callable(projection):
        raise TypeError(
            f"`projection` must be callable as projection(key, x, t), got {type(projection).__name__}."
        )
    _state_map_output("projection", lambda x, t: projection(key, x, t), shape, ((), t_dtype))


def _state_map_output(name: str, fn, shape: tuple[int, ...], t_spec):
    """The abstract output of `fn(x [shape], t [t_spec])`, which must have the state's shape."""
    x = jax.ShapeDtypeStruct(shape, jnp.result_type(float))
    try:
        out = abstract_output(fn, x, jax.ShapeDtypeStruct(*t_spec))
    except Exception as err:  # the function's own error, re-raised naming the argument
        raise ValueError(
            f"`{name}` could not be evaluated on x of shape {shape} and t of shape "
            f"{t_spec[0]}: {type(err).__name__}: {err}"
        ) from err
    if getattr(out, "shape", None) != shape:
        raise ValueError(
            f"`{name}` must return an array of the state's shape {shape}, got "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )
    return out


def evals_per_step(solver, levy_area=None) -> tuple[int, int]:
    """`(at init, per step)` drift evaluations of a diffrax solver.

    Read from the Butcher tableau where there is one (for implicit tableaus: one per stage, the
    Newton iterations not counted). Any other solver is counted once per solver (cached):
    `solver.init` and one `solver.step` run on a scalar toy problem whose drift counts its own
    calls. `levy_area` (the Brownian increment type) makes the toy problem an SDE.
    """
    if isinstance(solver, (dfx.Euler, dfx.EulerHeun)):
        return 0, 1
    tableau = getattr(solver, "tableau", None)
    if isinstance(tableau, dfx.ButcherTableau):
        return (1, tableau.num_stages - 1) if tableau.fsal else (0, tableau.num_stages)
    if isinstance(tableau, dfx.StochasticButcherTableau):
        ignored = 0 if tableau.ignore_stage_f is None else int(np.sum(tableau.ignore_stage_f))
        return 0, len(tableau.b_sol) - ignored
    return _counted_evals(solver, levy_area)


@functools.lru_cache(maxsize=64)  # diffrax solvers are hashable equinox modules
def _counted_evals(solver, levy_area) -> tuple[int, int]:
    """`solver.init` and one `solver.step` on a scalar toy problem, run eagerly in a thread of
    its own (JAX's trace state is per thread: an outer `jit` would only stage the callbacks)."""
    calls = []

    def drift(t, y, args):
        jax.debug.callback(lambda: calls.append(t))
        return -y

    def count():
        terms = dfx.ODETerm(drift)
        if levy_area is not None:
            bm = dfx.UnsafeBrownianPath((), jax.random.key(0), levy_area=levy_area)
            terms = dfx.MultiTerm(terms, dfx.ControlTerm(lambda t, y, args: 0.5 * y, bm))
        y0 = jnp.ones(())
        state = solver.init(terms, 0.0, 0.1, y0, None)
        jax.effects_barrier()
        at_init = len(calls)
        jax.block_until_ready(solver.step(terms, 0.0, 0.1, y0, None, state, False))
        jax.effects_barrier()
        return at_init, len(calls) - at_init

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(count).result()


# ---------------------------------------------------------------- the time grid
SIGMA_MAX = 80.0  # Karras et al.'s largest noise level sigma / alpha


def default_t_max(process: AbstractProcess, t_max, *, every_process: bool = False):
    """`t_max`, or when `None` the process' `t_max` or, if earlier, the time of the EDM noise
    level `SIGMA_MAX = 80` (`lambda = -log 80`): on every process (`every_process`, EDM's
    samplers) or only on the interpolants (`alpha(1) = 0`: rectified flow, cosine), whose own
    `t_max = 1 - 1e-4` is level `1e4` (a log-SNR grid from there spends its first steps where
    nothing happens; at 10 NFE UniPC on rectified flow: energy distance 0.053 -> 0.006)."""
    # The interpolants are the paths that start below `T` (`AbstractProcess.t_max`).
    if t_max is not None or not (every_process or process.t_max < process.T):
        return t_max

    def compute():
        return jnp.minimum(process.t_max, process.t_from_log_snr(jnp.asarray(-np.log(SIGMA_MAX))))

    return _cached_now(process, "t_max", compute)


_HOST: dict = {}  # grids and default times computed now, by the values they depend on


def _cached_now(inputs, name, compute: Callable):
    """`compute()` of concrete `inputs` computed now (also inside an outer `jit`) and cached by
    their values; staged into the caller's trace when one is traced. Op by op, the grid took
    about 15 eager dispatches, 10-20 ms of every sampler call on a GPU."""
    key = value_key(inputs)
    if key is None:
        return compute()
    with jax.ensure_compile_time_eval():
        return cached(_HOST, (name, key), compute)


def time_grid(process: AbstractProcess, num_steps: int, grid: str, t_eps, t_max, rho) -> Array:
    """`[N + 1]` times from `t_max` down to `t_eps`, traceable in `t_eps`, `t_max` and `rho`.

    `"time"`: uniform in `t`; `"logsnr"`: uniform in `lambda` (Lu et al. 2022);
    `"karras"`: `sigma_i = (s_max^(1/rho) + i/N (s_min^(1/rho) - s_max^(1/rho)))^rho` in the
    EDM noise level `sigma/alpha = exp(-lambda)` (Karras et al. 2022, eq. 5), on any path.

    Computed once for concrete inputs (`_cached_now`).
    """
    inputs = (process, t_eps, t_max, rho)
    return _cached_now(inputs, ("grid", grid, num_steps), lambda: _grid(*inputs, num_steps, grid))


def _grid(process: AbstractProcess, t_eps, t_max, rho, num_steps: int, grid: str) -> Array:
    i = jnp.arange(num_steps + 1, dtype=t_eps.dtype) / num_steps
    if grid == "time":
        ts = t_max + i * (t_eps - t_max)
    elif grid == "logsnr":
        lam0, lam1 = process.log_snr(t_max), process.log_snr(t_eps)
        ts = process.t_from_log_snr(lam0 + i * (lam1 - lam0))
    else:
        s_max, s_min = jnp.exp(-process.log_snr(t_max)), jnp.exp(-process.log_snr(t_eps))
        inv = 1.0 / rho
        sig = (s_max**inv + i * (s_min**inv - s_max**inv)) ** rho
        ts = process.t_from_log_snr(-jnp.log(sig))
    return ts.at[0].set(t_max).at[-1].set(t_eps)


def append_denoising(ts: Array, a: Array, s: Array) -> tuple[Array, Array, Array]:
    """The grid `[N + 1]` with its noise levels `a`, `s`, extended by `t = 0`, `alpha = 1`,
    `sigma = 0` (`lambda = +inf`): a last step of an exponential integrator or DDIM from
    `t_eps` there returns `x0(x, t_eps)` (its `sigma_s / sigma_t` and `e^{-h}` vanish). The
    denoising step then runs in the sampler's loop, with no second copy of the network."""
    return tuple(jnp.append(v, jnp.asarray(end, v.dtype)) for v, end in ((ts, 0), (a, 1), (s, 0)))


def is_zero(knob) -> bool:
    """True when a noise knob (`eta`, `churn`) is concrete and 0: the noise it scales need not be
    drawn (the program has no random draw per step). A traced knob may be 0 at run time: False."""
    return is_concrete(knob) and float(knob) == 0.0


def check_grid(grid, rho):
    check_choice(grid, "grid", GRIDS)
    return check_knob(rho, "rho", 1e-3)


# ---------------------------------------------------------------- inside the programs
def project(projection: Callable | None, key, x: Array, t) -> Array:
    """`projection(key, x, t)`, or `x` when there is none."""
    return x if projection is None else projection(key, x, t)


def solve_fixed(solver, terms, times: Array, y: Array, grid: Array, save_times, after_step=None, keys=None):
    """`y` carried by diffrax's `solver.step` over consecutive `times` `[N + 1]` in one
    `lax.scan`: the states of `diffeqsolve` with `StepTo` (FSAL stages kept in the solver
    state), from a program without its controller, event and saving machinery (half the compile
    of a reverse SDE or PF-ODE) that reverse mode can differentiate. As there, `y` is computed in
    at least the precision of the times. `after_step(keys[i], y, times[i + 1])` follows each
    step (e.g. a projection; FSAL solvers are then told the state moved). `grid` `[N + 1]` are
    the states' times for `save_times` (`scan_saving`). Returns `(y, saved)`."""
    y = y.astype(jnp.result_type(y, times.dtype))
    state = solver.init(terms, times[0], times[1], y, None)
    made_jump = after_step is not None

    def step(carry, inputs):
        y, state = carry
        t0, t1, key = inputs
        y, _, _, state, _ = solver.step(terms, t0, t1, y, None, state, made_jump)
        return (y if after_step is None else after_step(key, y, t1)), state

    (y, _), saved = scan_saving(step, (y, state), (times[:-1], times[1:], keys), grid, save_times)
    return y, saved


def scan_saving(step: Callable, carry, xs, grid: Array, save_times):
    """Run `carry = step(carry, xs[i])` in one `lax.scan`; `carry[0]` is the state `x`.

    `grid[0]` is the time of the initial state and `grid[i]` the time after step `i`
    (decreasing). With `save_times`, also returns `(trajectory [S, B, *event], times [S])`:
    for each requested time, the state at the first grid time at or below it.
    """
    if save_times is None:
        return jax.lax.scan(lambda c, xi: (step(c, xi), None), carry, xs)[0], None
    x = carry[0]
    tol = 1e-5 * jnp.max(jnp.abs(grid)) if jnp.issubdtype(grid.dtype, jnp.floating) else 0
    save_times = jnp.asarray(save_times, grid.dtype)
    index = jnp.argmax(grid[None, :] <= save_times[:, None] + tol, axis=1)  # [S]

    def put(i, x, buf):
        mask = (index == i).reshape((-1,) + (1,) * x.ndim)
        return jnp.where(mask, x[None], buf)

    buf = put(0, x, jnp.zeros((save_times.shape[0],) + x.shape, x.dtype))

    def body(c, inputs):
        inner, buf = c
        i, xi = inputs
        inner = step(inner, xi)
        return (inner, put(i, inner[0], buf)), None

    num = grid.shape[0] - 1
    (carry, buf), _ = jax.lax.scan(body, (carry, buf), (jnp.arange(1, num + 1), xs))
    return carry, (buf, grid[index])
