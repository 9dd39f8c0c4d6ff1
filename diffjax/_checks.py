"""The few argument checks shared by the public functions, and broadcasting helpers.

Checks run at the boundary, before anything compiles: a wrong type is a `TypeError`, a wrong
shape or range a `ValueError`, each naming the argument and what was expected. Values that are
only known under `jit` are checked with `eqx.error_if` where they are used.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

LOG_2PI = math.log(2.0 * math.pi)


def is_concrete(x) -> bool:
    """True when `x` holds values now (not a tracer inside `jit`/`vmap`/`grad`)."""
    return not isinstance(x, jax.core.Tracer)


def concrete(x) -> np.ndarray | None:
    """The value of `x` as a NumPy array when it is known now, else `None` (a tracer).

    Checks on values go through NumPy: inside `jit`, `jnp` ops on constants are staged too.
    """
    return np.asarray(x) if is_concrete(x) else None


def as_real_array(x, name: str, xp=jnp):
    """`x` as a real (integer or floating) array of `xp` (`jnp`, or `np` for host-side values).

    A str, None, a bool or complex array, or anything that is not an array raises `TypeError`
    naming `name` (not JAX's "not a valid JAX type").
    """
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"`{name}` must be a real array, got {type(x).__name__}.")
    try:
        arr = xp.asarray(x)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a real array, got {type(x).__name__}: {err}") from None
    if not (jnp.issubdtype(arr.dtype, jnp.integer) or jnp.issubdtype(arr.dtype, jnp.floating)):
        raise TypeError(f"`{name}` must be a real array, got dtype {arr.dtype}.")
    return arr


def as_float_array(x, name: str) -> Array:
    """`x` as a floating JAX array (`as_real_array`) of at least float32: integers become the
    default float, and bfloat16 / float16 data is computed in float32."""
    arr = as_real_array(x, name)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        return arr.astype(jnp.result_type(float))
    return arr.astype(jnp.promote_types(arr.dtype, jnp.float32))


def check_key(key, name: str = "key") -> Array:
    """Accept a typed key (`jax.random.key`) or a legacy uint32[2] `PRNGKey`; raise otherwise."""
    if key is None:
        raise TypeError(f"`{name}` must be a JAX PRNG key, got None.")
    arr = key if isinstance(key, jax.Array) else None
    if arr is None:
        raise TypeError(f"`{name}` must be a JAX PRNG key, got {type(key).__name__}.")
    if jnp.issubdtype(arr.dtype, jax.dtypes.prng_key):
        if arr.shape != ():
            raise ValueError(
                f"`{name}` must be a single key, got a key array of shape {arr.shape}."
            )
        return arr
    if arr.dtype == jnp.uint32 and arr.shape == (2,):
        return arr
    raise TypeError(
        f"`{name}` must be a JAX PRNG key (jax.random.key or PRNGKey), "
        f"got an array of dtype {arr.dtype} and shape {arr.shape}."
    )


def check_int(value, name: str, lo: int = 0) -> int:
    """A Python or NumPy integer `>= lo`; a bool or a float (even `2.0`) is a `TypeError`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}.")
    if value < lo:
        bound = "positive" if lo == 1 else f">= {lo}"
        raise ValueError(f"`{name}` must be {bound}, got {value}.")
    return int(value)


def check_positive_int(value, name: str) -> int:
    return check_int(value, name, 1)


def check_bool(value, name: str) -> bool:
    """A Python or NumPy bool (`1` or `"no"` is a `TypeError`: a flag is never guessed)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be a bool, got {type(value).__name__}.")
    return bool(value)


def check_batch_time(x: Array, t: Array, name_x: str = "x", name_t: str = "t") -> None:
    """`t` must be a scalar or have shape `[B]` with `B = x.shape[0]`."""
    if x.ndim < 1:
        raise ValueError(f"`{name_x}` must have a batch axis: shape [B, *event], got {x.shape}.")
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] != x.shape[0]):
        raise ValueError(
            f"`{name_t}` must be a scalar or have shape [B] = [{x.shape[0]}] "
            f"matching `{name_x}` of shape {x.shape}; got {t.shape}."
        )


def expand_to(coeff: Array, x: Array) -> Array:
    """Reshape a per-example coefficient `[B]` (or scalar) so it broadcasts against `[B, *event]`."""
    coeff = jnp.asarray(coeff)
    if coeff.ndim == 0:
        return coeff
    return coeff.reshape(coeff.shape + (1,) * (x.ndim - coeff.ndim))


def sum_event(x: Array, num_batch_dims: int = 1) -> Array:
    """Sum over every axis after the first `num_batch_dims`."""
    return jnp.sum(x, axis=tuple(range(num_batch_dims, x.ndim)))


def standard_normal_log_prob(z: Array, std: ArrayLike = 1.0) -> Array:
    """log N(z | 0, std^2 I) summed over the event axes: `[B, *event] -> [B]`."""
    dim = math.prod(z.shape[1:])
    std = jnp.asarray(std, z.dtype)
    return -0.5 * sum_event((z / std) ** 2) - dim * (jnp.log(std) + 0.5 * LOG_2PI)


def check_shape(shape, name: str = "shape", *, event: bool = True) -> tuple[int, ...]:
    """`shape` must be `[B, *event]`: positive ints, a batch axis and at least one event axis.

    With `event=False`, any tuple of non-negative ints (e.g. a prior draw of shape `(0, 2)`).
    """
    if isinstance(shape, (str, bytes)):
        raise TypeError(f"`{name}` must be a tuple of ints [B, *event], got {shape!r}.")
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"`{name}` must be a tuple of ints [B, *event], got {shape!r}.") from None
    if not event:
        return tuple(check_int(s, f"{name}[{i}]") for i, s in enumerate(shape))
    if len(shape) < 2:
        raise ValueError(
            f"`{name}` must be [B, *event] with a batch axis and at least one event axis, "
            f"e.g. (B, D) or (B, H, W, C); got {shape}."
        )
    return tuple(check_positive_int(s, f"{name}[{i}]") for i, s in enumerate(shape))


def check_scalar(value, name: str, *, positive: bool = False) -> None:
    """A real scalar (Python/NumPy number or 0-d array), finite and positive if asked.

    For constructors' `__check_init__`; a traced value passes (it is checked where it is used).
    """
    if isinstance(value, bool) or not isinstance(
        value, (int, float, np.number, np.ndarray, jax.Array)
    ):
        raise TypeError(f"`{name}` must be a real scalar, got {type(value).__name__}.")
    dtype = value.dtype if hasattr(value, "dtype") else np.result_type(value)
    if np.ndim(value) != 0 or not np.issubdtype(dtype, np.number) or np.iscomplexobj(value):
        raise TypeError(f"`{name}` must be a real scalar, got {dtype}{list(np.shape(value))}.")
    v = concrete(value)
    if v is None:
        return
    if not np.isfinite(v) or (positive and v <= 0):
        kind = "positive finite" if positive else "finite"
        raise ValueError(f"`{name}` must be a {kind} number, got {float(v)}.")


def check_knob(value, name: str, lo=None, hi=None, *, strict: bool = False) -> Array:
    """A real scalar knob (Python number or a possibly traced 0-d array) as a float array.

    Must be finite and in `[lo, hi]` (`(lo, hi]` with `strict`). Checked now, in NumPy, when
    concrete (no device op besides the one transfer); under `jit` the range is checked by
    `eqx.error_if` at run time.
    """
    if isinstance(value, bool) or not isinstance(
        value, (int, float, np.number, np.ndarray, jax.Array)
    ):
        raise TypeError(f"`{name}` must be a real scalar, got {type(value).__name__}.")
    dtype = jnp.result_type(value)
    if np.ndim(value) != 0 or not (
        jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
    ):
        raise TypeError(f"`{name}` must be a real scalar, got {dtype}{list(np.shape(value))}.")
    float_dtype = jnp.result_type(float)
    if hi is not None:
        bounds = f"in {'(' if strict else '['}{lo}, {hi}]"
    else:
        bounds = f"{'>' if strict else '>='} {lo}"
    if is_concrete(value):
        v = float(np.asarray(value, float_dtype))
        below = lo is not None and (v <= lo if strict else v < lo)
        if not np.isfinite(v) or below or (hi is not None and v > hi):
            raise ValueError(f"`{name}` must be finite and {bounds}, got {v}.")
        if isinstance(value, jax.Array) and value.dtype == float_dtype:
            return value
        with jax.ensure_compile_time_eval():  # a Python number stays concrete inside an outer jit
            return jnp.asarray(v, float_dtype)
    arr = jnp.asarray(value).astype(float_dtype)
    bad = ~jnp.isfinite(arr)
    if lo is not None:
        bad = bad | ((arr <= lo) if strict else (arr < lo))
    if hi is not None:
        bad = bad | (arr > hi)
    return eqx.error_if(arr, bad, f"`{name}` must be finite and {bounds}.")


def check_labels(labels, name: str = "labels", *, batch=None, num_classes=None) -> Array:
    """Integer class labels: a scalar or `[B]` (`batch` given: a leading axis of that size), in
    `[0, num_classes)` (`>= 0` without `num_classes`). The range is checked now when concrete
    and by `eqx.error_if` under `jit` (an out-of-range label would index a wrong embedding row
    silently, or give NaN in a cross-entropy)."""
    if isinstance(labels, bool) or not isinstance(labels, (int, np.integer, np.ndarray, jax.Array)):
        raise TypeError(f"`{name}` must be integer class labels (an int or an array), got {labels!r}.")
    with jax.ensure_compile_time_eval():
        labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"`{name}` must hold integer class labels, got dtype {labels.dtype}.")
    if batch is not None and (labels.ndim < 1 or labels.shape[0] != batch):
        raise ValueError(f"`{name}` must have a leading batch axis of size {batch}, got {labels.shape}.")
    if batch is None and labels.ndim > 1:
        raise ValueError(f"`{name}` must be a scalar or have shape [B], got shape {labels.shape}.")
    bounds = ">= 0" if num_classes is None else f"in [0, {num_classes})"
    hi = np.inf if num_classes is None else num_classes
    if is_concrete(labels):
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= hi):
            bad = values.min() if values.min() < 0 else values.max()
            raise ValueError(f"`{name}` must be class labels {bounds}, got {bad}.")
        return labels
    bad = jnp.any(labels < 0) if num_classes is None else jnp.any((labels < 0) | (labels >= hi))
    return eqx.error_if(labels, bad, f"`{name}` must be class labels {bounds}.")


def check_times(process, t_eps, t_max) -> tuple[Array, Array]:
    """`0 < t_eps < t_max <= T`; `None` takes the process' `t_eps` / `t_max`. May be traced."""
    t_eps = check_knob(process.t_eps if t_eps is None else t_eps, "t_eps", 0.0, process.T)
    t_max = check_knob(process.t_max if t_max is None else t_max, "t_max", 0.0, process.T)
    if is_concrete(t_eps) and is_concrete(t_max):
        if not 0.0 < float(t_eps) < float(t_max):
            raise ValueError(
                f"`t_eps` must lie in (0, t_max) = (0, {float(t_max)}), got {float(t_eps)}."
            )
    else:
        t_eps = eqx.error_if(
            t_eps, (t_eps <= 0) | (t_eps >= t_max), "`t_eps` must lie in (0, t_max)."
        )
    return t_eps, t_max


_OUTPUTS: dict = {}  # abstract outputs of checked functions, by structure and leaf types
_MAX_CACHED = 256  # entries of each host-side cache (the oldest is dropped)


def cached(cache: dict, key, compute: Callable):
    """`compute()`, kept in `cache` under `key`; an unhashable key is computed, not kept."""
    try:
        out = cache.get(key)
    except TypeError:
        return compute()
    if out is None:
        out = compute()
        if len(cache) >= _MAX_CACHED:
            cache.pop(next(iter(cache)))
        cache[key] = out
    return out


def value_key(tree):
    """A hashable key of a pytree's structure and values, or `None` when a leaf is traced.

    Arrays enter by type and bytes (read to the host), other leaves as they are."""
    leaves, treedef = jax.tree.flatten(tree)
    if not all(is_concrete(v) for v in leaves):
        return None
    arrays = (jax.Array, np.ndarray, np.generic)
    return treedef, tuple(
        (jax.typeof(v), np.asarray(v).tobytes()) if isinstance(v, arrays) else v for v in leaves
    )


def abstract_output(fn, *args):
    """`jax.eval_shape(fn, *args)` for arrays or `ShapeDtypeStruct`s `args`, cached by their
    shapes and dtypes and by `fn`'s pytree structure and its leaves' types.

    The output's type depends only on those, so a sampler called again with the same model and
    shapes does not trace the network again (a U-Net's trace took ~100 ms per public call).
    Non-array leaves (functions) are part of the key as they are, as in the samplers' jit caches.
    `fn` is called in a closure, so `eval_shape` never formats a model's arrays.
    """
    specs = tuple(jax.ShapeDtypeStruct(np.shape(a), jnp.result_type(a)) for a in args)
    leaves, treedef = jax.tree.flatten(fn)
    types = tuple(
        jax.typeof(v) if isinstance(v, (jax.Array, np.ndarray, np.generic)) else v for v in leaves
    )
    key = (treedef, types, specs)
    return cached(_OUTPUTS, key, lambda: jax.eval_shape(lambda *a: fn(*a), *specs))


def check_shape_preserving(fn, name: str, x_shape: tuple[int, ...], *arg_dtypes) -> None:
    """Check, without running or compiling it, that `fn(x, *args)` maps `[B, *event]` to itself.

    `x` is abstract with shape `x_shape` (default float dtype); each extra argument is an
    abstract `[B]` array of the given dtype (the time or noise level). Uses `abstract_output`.
    """
    if not callable(fn):
        raise TypeError(f"`{name}` must be callable, got {type(fn).__name__}.")
    x = jax.ShapeDtypeStruct(x_shape, jnp.result_type(float))
    args = [jax.ShapeDtypeStruct(x_shape[:1], dtype) for dtype in arg_dtypes]
    try:
        out = abstract_output(fn, x, *args)
    except Exception as err:  # the model's own error, re-raised naming the argument
        raise ValueError(
            f"`{name}` could not be evaluated on x of shape {x_shape}"
            + (f" and [B] = [{x_shape[0]}] times" if args else "")
            + f": {type(err).__name__}: {err}"
        ) from err
    if getattr(out, "shape", None) != x_shape:
        raise ValueError(
            f"`{name}` must return an array of the input shape {x_shape}, got "
            f"{getattr(out, 'shape', type(out).__name__)}."
        )


def check_choice(value, name: str, choices: tuple):
    """`value` must be one of `choices` (a value of another type is a `TypeError`); returned unchanged."""
    if isinstance(value, bool) or not isinstance(value, tuple({type(c) for c in choices})):
        raise TypeError(f"`{name}` must be one of {choices}, got {type(value).__name__}.")
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")
    return value


COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
"""The dtypes a network may compute in (its parameters stay float32)."""


def check_dtype(dtype, name: str = "dtype") -> jnp.dtype | None:
    """A compute dtype: `None`, or one of `COMPUTE_DTYPES` by name or as a dtype
    (`"bfloat16"`, `jnp.bfloat16`), returned as a `jnp.dtype`. Not a dtype at all is a
    `TypeError`, another dtype (`int8`, `float64`) a `ValueError`."""
    if dtype is None:
        return None
    expected = f"`{name}` must be one of {COMPUTE_DTYPES} or None"
    if isinstance(dtype, bool) or not isinstance(dtype, (str, type, np.dtype)):
        raise TypeError(f"{expected}, got {dtype!r}.")
    try:
        dt = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{expected}, got {dtype!r}.") from None
    if dt.name not in COMPUTE_DTYPES:
        raise ValueError(f"{expected}, got {dt.name}.")
    return dt


def check_callable(fn, name: str):
    if not callable(fn):
        raise TypeError(f"`{name}` must be callable, got {type(fn).__name__}.")
    return fn


# ---------------------------------------------------------------- diffrax objects
# (diffrax is imported by the callers, the samplers and likelihoods, which load on first use)
def check_solver(
    solver, default, name: str = "solver", *, fixed_steps: bool = False, ode: bool = False
):
    """A diffrax solver (`default` for `None`); for an `ode`, one that takes a single term (not
    an SDE solver). On fixed steps, solved as a scan of `solver.step` without `diffeqsolve`'s
    checks, an implicit solver needs its root finder's tolerances (diffrax takes them from an
    adaptive controller otherwise)."""
    import diffrax as dfx

    solver = default if solver is None else solver
    if not isinstance(solver, dfx.AbstractSolver):
        raise TypeError(f"`{name}` must be a diffrax solver, got {type(solver).__name__}.")
    structure = solver.term_structure
    if ode and not (isinstance(structure, type) and issubclass(dfx.ODETerm, structure)):
        raise TypeError(
            f"`{name}` does not fit the problem: {type(solver).__name__} does not take the one "
            "term of an ODE (an SDE or partitioned solver); pass an ODE solver, e.g. "
            "diffrax.Heun()."
        )
    if fixed_steps and isinstance(solver, dfx.AbstractImplicitSolver):
        tol = getattr(solver.root_finder, "rtol", None)
        if not isinstance(tol, (int, float, np.floating, jax.Array)):
            raise TypeError(
                f"`{name}` does not fit the problem: an implicit solver on fixed steps needs "
                "its root finder's `rtol` and `atol` (diffrax takes them from an adaptive "
                "`stepsize_controller` otherwise)."
            )
    return solver


def check_controller(controller, default):
    import diffrax as dfx

    controller = default if controller is None else controller
    if not isinstance(controller, dfx.AbstractStepSizeController):
        raise TypeError(
            "`stepsize_controller` must be a diffrax step-size controller (e.g. "
            f"diffrax.PIDController(rtol=1e-5, atol=1e-5)), got {type(controller).__name__}."
        )
    return controller


def reraise_solver_error(err: Exception, max_steps: int):
    """Turn diffrax's errors into ones that say which argument to change: diffrax's own
    `ValueError` / `TypeError` while tracing (terms, solver and controller that do not fit)
    names the `solver`; running out of steps names `max_steps`."""
    frames = traceback.extract_tb(err.__traceback__)
    if isinstance(err, ValueError | TypeError) and frames and "/diffrax/" in frames[-1].filename:
        raise TypeError(
            f"`solver` does not fit the problem (its terms or the `stepsize_controller`): {err}"
        ) from err
    if "max_steps" in str(err) or "maximum number of solver steps" in str(err):
        raise RuntimeError(
            f"the solve needed more than `max_steps` = {max_steps} steps: raise `max_steps` or "
            "loosen the `stepsize_controller` tolerances."
        ) from err
    raise err
