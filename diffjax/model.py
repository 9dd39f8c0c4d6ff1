"""A model knows what it predicts: `Model(fn, process, prediction)` and its closed-form views.

On a path `x_t = alpha x_0 + sigma eps` (write `a = alpha(t)`, `s = sigma(t)`, `a'`, `s'` their
time derivatives) a network output has one of these meanings, each an affine function of the
pair `(x0, eps) = (E[x_0 | x_t], E[eps | x_t])`:

    "eps"       eps
    "x0"        x0
    "score"     grad log p_t(x_t) = -eps / s
    "v"         a eps - s x0                     (Salimans & Ho 2022, arXiv:2202.00512)
    "velocity"  a' x0 + s' eps = dx_t/dt of the PF-ODE (flow matching; Lipman et al. 2023)

and with `x_t = a x0 + s eps` each determines the pair:

    eps:      x0 = (x - s eps) / a
    x0:       eps = (x - a x0) / s
    score:    eps = -s score
    v:        eps = (s x + a v) / (a^2 + s^2),     x0 = (a x - s v) / (a^2 + s^2)
    velocity: x0 = (s' x - s u) / det,  eps = (a u - a' x) / det,  det = a s' - s a' = -a s lambda' > 0

so every view is exact algebra on the network output. Samplers, losses, guidance and the
likelihood take a `Model`; `Model.on(process)` moves it to another path with the same log-SNR
range (Karras et al. 2022, arXiv:2206.00364, Sec. 4: `x / alpha` depends on `lambda` only).

Shapes: `x: [B, *event]`, `t` a scalar or `[B]` (broadcast to `[B]` for the network).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from diffjax._checks import (
    as_float_array,
    as_real_array,
    check_batch_time,
    check_choice,
    check_dtype,
    check_knob,
    expand_to,
)
from diffjax._typing import DType
from diffjax.processes import AbstractMarginal, AbstractProcess
from diffjax.schedules import DiscreteSchedule

__all__ = [
    "PREDICTIONS",
    "EDMDenoiser",
    "Model",
    "edm_model",
    "mixed_precision",
    "path_coefficients",
]

PREDICTIONS = ("eps", "x0", "score", "v", "velocity")
"""The prediction kinds a `Model` knows: what its network outputs."""


def to_x0_eps(prediction: str, out: Array, x: Array, a, s, da=None, ds=None) -> tuple[Array, Array]:
    """`(x0, eps)` from a network output of kind `prediction` (coefficients broadcast to `x`)."""
    if prediction == "eps":
        return (x - s * out) / a, out
    if prediction == "x0":
        return out, (x - a * out) / s
    if prediction == "score":
        return (x + s**2 * out) / a, -s * out
    if prediction == "v":
        norm = a**2 + s**2
        return (a * x - s * out) / norm, (s * x + a * out) / norm
    det = a * ds - s * da
    return (ds * x - s * out) / det, (a * out - da * x) / det


def from_x0_eps(prediction: str, x0: Array, eps: Array, a, s, da=None, ds=None) -> Array:
    """The output of kind `prediction` from the pair `(x0, eps)`."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "score":
        return -eps / s
    if prediction == "v":
        return a * eps - s * x0
    return da * x0 + ds * eps


def path_coefficients(process: AbstractMarginal, x: Array, t) -> tuple:
    """`(alpha, sigma, alpha', sigma')` at `t` broadcast against `x` (derivatives `None` on a schedule)."""
    t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
    if isinstance(process, AbstractProcess):
        coeffs = process.marginal_derivatives(t.astype(x.dtype))
    else:
        coeffs = process.marginal(t) + (None, None)
    return tuple(None if c is None else expand_to(c, x) for c in coeffs)


class Model(eqx.Module):
    """A network `fn` on a process, with the meaning of its output.

    `fn(x, t_net, *args)` (or `fn(params, x, t_net, *args)` when `params` is given) with
    `t_net = time_map(t)` (identity by default; e.g. `lambda t: 1000 * t` for a network trained
    on DDPM steps). A pytree: `params` and the arrays of `fn` and `process` are leaves, so new
    parameters do not recompile a sampler that takes the model.

    Args:
        fn: the network or any function of `(x [B, *event], t [B], *args) -> [B, *event]`.
        process: a continuous `AbstractProcess` or a `DiscreteSchedule` (integer `t`).
        prediction: one of `PREDICTIONS`.
        params: optional parameters passed first to `fn` (a Flax `nets.split` apply function).
        time_map: optional `t -> t_net`.
        compute_dtype: optional dtype the function computes in (`"bfloat16"`, `"float16"`,
            `"float32"`; see `mixed_precision`). `None` (default) calls `fn` as it is.

    Raises:
        TypeError / ValueError: naming the argument, at construction.
    """

    fn: Callable
    process: AbstractMarginal
    prediction: str = eqx.field(static=True)
    params: Any = None
    time_map: Callable | None = None
    compute_dtype: DType = eqx.field(
        static=True, default=None, converter=lambda d: check_dtype(d, "compute_dtype")
    )

    def __check_init__(self):
        if not callable(self.fn):
            raise TypeError(f"`fn` must be callable, got {type(self.fn).__name__}.")
        if not isinstance(self.process, AbstractMarginal):
            raise TypeError(
                "`process` must be a diffjax process (VPSDE, EDM, RectifiedFlow, ...) or a "
                f"DiscreteSchedule, got {type(self.process).__name__}."
            )
        check_choice(self.prediction, "prediction", PREDICTIONS)
        if self.prediction == "velocity" and isinstance(self.process, DiscreteSchedule):
            raise ValueError("`prediction='velocity'` needs a continuous process, not a schedule.")
        if self.time_map is not None and not callable(self.time_map):
            raise TypeError(f"`time_map` must be callable, got {type(self.time_map).__name__}.")

    @property
    def is_continuous(self) -> bool:
        return isinstance(self.process, AbstractProcess)

    def __call__(self, x: ArrayLike, t: ArrayLike, *args) -> Array:
        """The raw network output (of kind `prediction`): `[B, *event]`, a floating output in
        `x`'s dtype at least (a bfloat16 network's output is promoted, so samplers keep float32).
        With `compute_dtype`, `fn` sees `x`, its own arrays and `params` in that dtype."""
        x = as_float_array(x, "x")
        t = as_real_array(t, "t")
        check_batch_time(x, t)
        t = jnp.broadcast_to(t, x.shape[:1])
        t_net = t if self.time_map is None else self.time_map(t)
        fn, params, x_net = self.fn, self.params, x
        if self.compute_dtype is not None:
            fn, params, x_net = _cast_floating((fn, params, x), self.compute_dtype)
        out = fn(x_net, t_net, *args) if params is None else fn(params, x_net, t_net, *args)
        dtype = getattr(out, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating):
            out = out.astype(jnp.promote_types(dtype, x.dtype))
        return out

    def predict(self, kind: str, x: ArrayLike, t: ArrayLike, *args) -> Array:
        """The view `kind` (one of `PREDICTIONS`) of the model at `(x, t)`: `[B, *event]`."""
        check_choice(kind, "kind", PREDICTIONS)
        if kind == "velocity" and not self.is_continuous:
            raise ValueError("`kind='velocity'` needs a continuous process, not a schedule.")
        x = as_float_array(x, "x")
        out = self(x, t, *args)
        if kind == self.prediction:
            return out
        coeffs = path_coefficients(self.process, x, t)
        x0, eps = to_x0_eps(self.prediction, out, x, *coeffs)
        return from_x0_eps(kind, x0, eps, *coeffs)

    def x0_eps(self, x: ArrayLike, t: ArrayLike, *args) -> tuple[Array, Array]:
        """`(E[x_0 | x_t], E[eps | x_t])` from one network evaluation."""
        x = as_float_array(x, "x")
        return to_x0_eps(
            self.prediction, self(x, t, *args), x, *path_coefficients(self.process, x, t)
        )

    def eps(self, x, t, *args) -> Array:
        """`E[eps | x_t]`."""
        return self.predict("eps", x, t, *args)

    def x0(self, x, t, *args) -> Array:
        """`E[x_0 | x_t]` (Tweedie's denoiser)."""
        return self.predict("x0", x, t, *args)

    def score(self, x, t, *args) -> Array:
        """`grad_x log p_t(x) = -eps / sigma`."""
        return self.predict("score", x, t, *args)

    def v(self, x, t, *args) -> Array:
        """`v = alpha eps - sigma x0`."""
        return self.predict("v", x, t, *args)

    def velocity(self, x, t, *args) -> Array:
        """The PF-ODE velocity `alpha' x0 + sigma' eps`."""
        return self.predict("velocity", x, t, *args)

    def on(self, process: AbstractProcess) -> Model:
        """This model on another continuous path, matched by log-SNR.

        At `t` on `process`, with `t_m = self.process.t_from_log_snr(process.log_snr(t))`, the
        states are rescalings, `x_m = c x` with `c = sqrt((a_m^2 + s_m^2) / (a^2 + s^2))`, and
        `(x0, eps)` are the same; the new model predicts eps (or x0 for x0-like kinds).
        """
        if not isinstance(process, AbstractProcess) or not self.is_continuous:
            raise TypeError(
                "`process` must be continuous: `Model.on` moves a model between continuous processes; got "
                f"{type(self.process).__name__} -> {type(process).__name__}."
            )
        if process is self.process or eqx.tree_equal(process, self.process) is True:
            return self
        kind = "eps" if self.prediction in ("eps", "score") else "x0"
        return Model(_Rescaled(self, process, kind), process, kind)


def _cast_floating(tree, dtype):
    """Every floating array leaf of `tree` cast to `dtype` (other leaves unchanged)."""

    def cast(leaf):
        if isinstance(leaf, jax.Array | np.ndarray) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(dtype)
        return leaf

    return jax.tree.map(cast, tree)


def mixed_precision(model: Model, dtype: DType = "bfloat16") -> Model:
    """`model` with its network computed in `dtype` and everything around it in float32.

    The mixed precision of Micikevicius et al. 2018 (arXiv:1710.03740): each call casts the
    state `x`, the floating arrays of `model.fn` and `model.params` (kept in float32) to
    `dtype`, evaluates the function, and casts the output back to `x`'s float32, so samplers,
    guidance and the likelihood keep their own arithmetic in float32. The time `t` stays
    float32: networks embed it at frequencies up to ~1000 per unit (`1000 t` in bfloat16 is off
    by up to 2). Works for any function, the exact models included; a `diffjax.nets` network
    built with `dtype="bfloat16"` does the same inside (norm statistics, attention softmax and
    the time embedding in float32) and needs no wrapper.

    Args:
        model: a `Model`.
        dtype: `"bfloat16"` (default), `"float16"` or `"float32"` (or the dtype objects).

    Returns:
        The same `Model` with `compute_dtype=dtype`: `[B, *event]` float32 outputs.
    """
    if not isinstance(model, Model):
        raise TypeError(f"`model` must be a diffjax Model, got {type(model).__name__}.")
    return dataclasses.replace(model, compute_dtype=check_dtype(dtype, "dtype"))


class _Rescaled(eqx.Module):
    """`model`'s eps or x0 view evaluated at the log-SNR-matched time and rescaled state."""

    model: Model
    process: AbstractProcess
    kind: str = eqx.field(static=True)

    def __call__(self, x, t, *args):
        t = t.astype(x.dtype)
        t_m = self.model.process.t_from_log_snr(self.process.log_snr(t))
        a, s = self.process.marginal(t)
        a_m, s_m = self.model.process.marginal(t_m)
        c = expand_to(jnp.sqrt((a_m**2 + s_m**2) / (a**2 + s**2)), x)
        return self.model.predict(self.kind, c * x, t_m, *args)


class EDMDenoiser(eqx.Module):
    r"""The preconditioned denoiser of Karras et al. 2022 (arXiv:2206.00364, Table 1), on any path.

    In EDM variables `x^ = x / alpha`, `sigma_e = sigma / alpha = e^{-lambda}`:

        D(x^; sigma_e) = c_skip x^ + c_out F(c_in x^, c_noise),
        c_skip = sd^2 / (sigma_e^2 + sd^2),   c_out = sigma_e sd / sqrt(sigma_e^2 + sd^2),
        c_in = 1 / sqrt(sigma_e^2 + sd^2),    c_noise = log(sigma_e) / 4,

    with `sd = sigma_data`. Written in the process' own `(alpha, sigma)` so that it stays finite
    where `alpha -> 0`: `c_in x^ = x / r`, `c_skip x^ = sd^2 alpha x / r^2`, `c_out = sigma sd / r`
    with `r = sqrt(sigma^2 + alpha^2 sd^2)`. The output is `E[x_0 | x_t]` (an `"x0"` model).
    `net(x_in, c_noise, *args)`, or `net(params, x_in, c_noise, *args)` when called with params.
    """

    net: Callable
    process: AbstractProcess
    sigma_data: Array
    with_params: bool = eqx.field(static=True)

    def coefficients(self, t: Array, x: Array) -> tuple[Array, Array, Array, Array]:
        """`(c_in, c_skip, c_out, c_noise)` in process variables (see the class), broadcast to `x`."""
        a, s = self.process.marginal(t)
        sd = self.sigma_data
        r = jnp.sqrt(s**2 + (a * sd) ** 2)
        c_noise = 0.25 * (jnp.log(s) - jnp.log(a))
        return tuple(expand_to(c, x) for c in (1.0 / r, sd**2 * a / r**2, s * sd / r)) + (c_noise,)

    def __call__(self, *args) -> Array:
        params, (x, t, *rest) = (args[0], args[1:]) if self.with_params else (None, args)
        c_in, c_skip, c_out, c_noise = self.coefficients(t.astype(x.dtype), x)
        net_args = (c_in * x, c_noise, *rest)
        out = self.net(params, *net_args) if self.with_params else self.net(*net_args)
        if getattr(out, "shape", None) != x.shape:
            raise ValueError(
                f"`net` must return an array of the shape of x {x.shape}, "
                f"got {getattr(out, 'shape', type(out).__name__)}."
            )
        return c_skip * x + c_out * out


def edm_model(
    net: Callable,
    process: AbstractProcess,
    *,
    sigma_data: ArrayLike = 0.5,
    params: Any = None,
) -> Model:
    """The `"x0"` `Model` of a raw network `F` under EDM preconditioning (`EDMDenoiser`).

    `net(x_in [B, *event], c_noise [B], *args)` (or `net(params, ...)` with `params`) is what
    `losses.edm` trains; any sampler then takes the returned model, on any continuous process.
    """
    if not callable(net):
        raise TypeError(f"`net` must be callable, got {type(net).__name__}.")
    if not isinstance(process, AbstractProcess):
        raise TypeError(f"`process` must be a continuous process, got {type(process).__name__}.")
    sd = check_knob(sigma_data, "sigma_data", 0.0, strict=True)
    denoiser = EDMDenoiser(net, process, sd, params is not None)
    return Model(denoiser, process, "x0", params=params)
