"""Gaussian paths `x_t = alpha(t) x_0 + sigma(t) eps`, `t in [0, T]` (notes, topics 2-5).

Every continuous process here is one such path. From `alpha` and `sigma` alone follow
(Song et al. 2021, arXiv:2011.13456; Kingma et al. 2021, arXiv:2107.00630):

    log-SNR      lambda(t) = log(alpha / sigma)                      (decreasing in t)
    SDE drift    f(x, t) = (d log alpha / dt) x
    diffusion    g(t)^2 = d sigma^2 / dt - 2 (d log alpha / dt) sigma^2
    reverse SDE  dx = [f - g^2 s] dt + g dW       (t from T down to t_eps)
    PF-ODE       dx/dt = f - g^2 s / 2 = alpha'(t) E[x_0 | x_t] + sigma'(t) E[eps | x_t]

The last form (the velocity of flow matching) is what the PF-ODE integrates: it stays finite at
the end points of paths where `alpha(T) = 0` or `sigma(0) = 0`. All paths with the same
log-SNR are rescalings of one another (Karras et al. 2022, arXiv:2206.00364, Sec. 4):
`x / alpha` depends on `lambda` only, which `Model.on` uses to move a model between paths.

Shapes: `t` is a scalar or `[B]`; `x` is `[B, *event]`.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from diffjax._checks import (
    as_float_array,
    check_key,
    check_positive_int,
    check_scalar,
    check_shape,
    concrete,
    expand_to,
    standard_normal_log_prob,
)

__all__ = [
    "EDM",
    "VESDE",
    "VPSDE",
    "AbstractMarginal",
    "AbstractProcess",
    "Cosine",
    "RectifiedFlow",
    "SubVPSDE",
]



def _as_leaf(value):
    """Converter for a numeric parameter stored as an array leaf (others are left for
    `__check_init__` to reject by name)."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return jnp.asarray(value)
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.number):
        return jnp.asarray(value)
    return value


def _as_static(value):
    """Converter for a numeric parameter stored as a static Python float."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    return value


def _check_range(lo_name: str, lo, hi_name: str, hi, *, strict: bool = True) -> None:
    """Two positive scalars with `lo < hi` (`lo <= hi` unless `strict`), checked when concrete."""
    check_scalar(lo, lo_name, positive=True)
    check_scalar(hi, hi_name, positive=True)
    lo_c, hi_c = concrete(lo), concrete(hi)
    if lo_c is not None and hi_c is not None and (lo_c >= hi_c if strict else lo_c > hi_c):
        rel = "be smaller than" if strict else "not exceed"
        raise ValueError(f"`{lo_name}` ({float(lo_c)}) must {rel} `{hi_name}` ({float(hi_c)}).")


class AbstractMarginal(eqx.Module):
    """Gaussian marginals `q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I)` and an isotropic prior.

    Shared by the continuous processes (`t` a time in `[0, T]`) and the discrete DDPM chain
    (`schedules.DiscreteSchedule`, `t` an integer step in `0..T`).
    """

    @abc.abstractmethod
    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        """`(alpha(t), sigma(t))` of `q(x_t | x_0) = N(alpha x_0, sigma^2 I)`; shapes of `t`."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior `p_T ~ N(0, prior_std^2 I)`."""

    def log_snr(self, t: ArrayLike) -> Array:
        """`lambda(t) = log(alpha(t) / sigma(t))`, the half log signal-to-noise ratio."""
        a, s = self.marginal(t)
        return jnp.log(a) - jnp.log(s)

    def prior_sample(self, key, shape) -> Array:
        """Draw `x_T ~ N(0, prior_std^2 I)` of the full shape `[B, *event]`."""
        key = check_key(key)
        shape = check_shape(shape, event=False)
        return self.prior_std * jax.random.normal(key, shape)

    def prior_log_prob(self, z: ArrayLike) -> Array:
        """`log N(z | 0, prior_std^2 I)` per example: `[B, *event] -> [B]`."""
        z = as_float_array(z, "z")
        if z.ndim < 1:
            raise ValueError(f"`z` must have shape [B, *event], got {z.shape}.")
        return standard_normal_log_prob(z, self.prior_std)


@eqx.filter_jit  # compiled once per process type and shape, also when called eagerly
def _bisect_log_snr(process: AbstractProcess, lam: Array) -> Array:
    lo, hi = jnp.zeros_like(lam), jnp.full_like(lam, process.T)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = process.log_snr(mid) > lam  # lambda decreases: the root lies above mid
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 60, halve, (lo, hi))
    return 0.5 * (lo + hi)


class AbstractProcess(AbstractMarginal):
    """A continuous Gaussian path `x_t = alpha(t) x_0 + sigma(t) eps` on `t in [0, T]`.

    Subclasses give `marginal`; everything else is derived here (subclasses may override a
    derived quantity with a closed form). `t_eps` is the default end time of sampling and
    `t_max` the default start (`T`, or just below it where `alpha(T) = 0`).
    """

    @property
    @abc.abstractmethod
    def T(self) -> float:
        """The end of the time interval `[0, T]`."""

    @property
    def t_eps(self) -> float:
        """Default final time of sampling (the last noise level is `sigma(t_eps)`)."""
        return 1e-3 * self.T

    @property
    def t_max(self) -> float:
        """Default first time of sampling."""
        return self.T

    def _t(self, t: ArrayLike) -> Array:
        return as_float_array(t, "t")

    def alpha(self, t: ArrayLike) -> Array:
        return self.marginal(t)[0]

    def sigma(self, t: ArrayLike) -> Array:
        return self.marginal(t)[1]

    def marginal_derivatives(self, t: ArrayLike) -> tuple[Array, Array, Array, Array]:
        """`(alpha, sigma, d alpha/dt, d sigma/dt)` at `t` (forward-mode derivative of `marginal`)."""
        t = self._t(t)
        (a, s), (da, ds) = jax.jvp(self.marginal, (t,), (jnp.ones_like(t),))
        return a, s, da, ds

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Inverse of `log_snr` by bisection on `[0, T]` (60 halvings: float64 resolution)."""
        return _bisect_log_snr(self, as_float_array(log_snr, "log_snr"))

    def drift_coefficient(self, t: ArrayLike) -> Array:
        """`d log alpha / dt`, so that `f(x, t) = drift_coefficient(t) x`."""
        a, _, da, _ = self.marginal_derivatives(t)
        return da / a

    def drift(self, x: ArrayLike, t: ArrayLike) -> Array:
        """`f(x, t) = (d log alpha / dt) x`: `[B, *event] -> [B, *event]`."""
        x = jnp.asarray(x)
        return expand_to(self.drift_coefficient(t), x) * x

    def diffusion(self, t: ArrayLike) -> Array:
        """`g(t) = sqrt(d sigma^2/dt - 2 (d log alpha/dt) sigma^2)`, shape of `t`."""
        a, s, da, ds = self.marginal_derivatives(t)
        return jnp.sqrt(jnp.maximum(2.0 * s * (ds - da / a * s), 0.0))

    def reverse_drift(self, score, x: ArrayLike, t: ArrayLike) -> Array:
        """Drift of the reverse-time SDE, `f(x, t) - g(t)^2 s(x, t)`, given `s = score(x, t)`."""
        x = jnp.asarray(x)
        return self.drift(x, t) - expand_to(self.diffusion(t) ** 2, x) * score

    def probability_flow_drift(self, score, x: ArrayLike, t: ArrayLike) -> Array:
        """Drift of the probability-flow ODE, `f(x, t) - g(t)^2 s(x, t) / 2`, given `s`."""
        x = jnp.asarray(x)
        return self.drift(x, t) - 0.5 * expand_to(self.diffusion(t) ** 2, x) * score


class _AbstractVPFamily(AbstractProcess):
    """VP and sub-VP: `beta(t) = beta_min + t / T (beta_max - beta_min)`, `alpha = exp(-int beta / 2)`."""

    beta_min: Array = eqx.field(default=0.1, converter=_as_leaf)
    beta_max: Array = eqx.field(default=20.0, converter=_as_leaf)
    T: float = eqx.field(default=1.0, static=True, converter=_as_static)

    def __check_init__(self):
        _check_range("beta_min", self.beta_min, "beta_max", self.beta_max, strict=False)
        check_scalar(self.T, "T", positive=True)

    @property
    def prior_std(self) -> float:
        return 1.0

    def beta(self, t: ArrayLike) -> Array:
        """`beta(t) = beta_min + t / T (beta_max - beta_min)`."""
        return self.beta_min + self._t(t) / self.T * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: ArrayLike) -> Array:
        """`log alpha(t) = -1/2 int_0^t beta(s) ds`."""
        t = self._t(t)
        return -0.25 * t**2 / self.T * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def drift_coefficient(self, t: ArrayLike) -> Array:
        """`d log alpha / dt = -beta(t) / 2`."""
        return -0.5 * self.beta(t)


class VPSDE(_AbstractVPFamily):
    """Variance-preserving SDE `dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW` (Song et al. 2021).

    The continuous limit of the DDPM chain with `beta_t = beta(t) dt` (notes, topic 3):
    `alpha(t) = exp(-1/2 int_0^t beta)`, `sigma(t)^2 = 1 - alpha(t)^2`; prior `N(0, I)`.
    """

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        lmc = self.log_mean_coeff(t)
        return jnp.exp(lmc), jnp.sqrt(-jnp.expm1(2.0 * lmc))

    def diffusion(self, t: ArrayLike) -> Array:
        return jnp.sqrt(self.beta(t))

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Closed-form inverse of `log_snr`: solve `-log alpha(t) = log(1 + e^{-2 lambda}) / 2`."""
        lam = as_float_array(log_snr, "log_snr")
        neg_lmc = 0.5 * jnp.logaddexp(0.0, -2.0 * lam)
        delta = (self.beta_max - self.beta_min) / self.T
        root = 0.5 * self.beta_min + jnp.sqrt(0.25 * self.beta_min**2 + delta * neg_lmc)
        return 2.0 * neg_lmc / root

    @classmethod
    def from_ddpm(cls, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> VPSDE:
        """The VP SDE whose Euler discretisation with `dt = 1/N` is the linear DDPM schedule.

        The notes' link `beta_t = beta(t) dt`: `beta_min = N beta_start`, `beta_max = N beta_end`.
        Step `i` of the chain corresponds to time `t = i / N`.
        """
        num_steps = check_positive_int(num_steps, "num_steps")
        return cls(beta_min=num_steps * beta_start, beta_max=num_steps * beta_end)

    def to_ddpm(self, num_steps: int):
        """The linear DDPM schedule with `N` steps and `beta_i = beta(t_i) T / N` (inverse of `from_ddpm`)."""
        from diffjax.schedules import linear

        num_steps = check_positive_int(num_steps, "num_steps")
        scale = self.T / num_steps
        if float(self.beta_max) * scale >= 1.0:
            raise ValueError(
                f"`num_steps` must exceed beta_max * T = {float(self.beta_max) * self.T:g} so that "
                f"every beta_i = beta(t_i) T / N lies in (0, 1); got {num_steps}."
            )
        return linear(num_steps, float(self.beta_min) * scale, float(self.beta_max) * scale)


class SubVPSDE(_AbstractVPFamily):
    """Sub-VP SDE `dx = -beta x / 2 dt + sqrt(beta (1 - exp(-2 int_0^t beta))) dW` (Song et al. 2021).

    `alpha(t) = exp(-1/2 int_0^t beta)`, `sigma(t) = 1 - alpha(t)^2`; prior `N(0, I)`.
    """

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        lmc = self.log_mean_coeff(t)
        return jnp.exp(lmc), -jnp.expm1(2.0 * lmc)

    def diffusion(self, t: ArrayLike) -> Array:
        return jnp.sqrt(self.beta(t) * -jnp.expm1(4.0 * self.log_mean_coeff(t)))


class VESDE(AbstractProcess):
    """Variance-exploding SDE `dx = sqrt(d sigma_VE(t)^2 / dt) dW` (Song et al. 2021).

    `sigma_VE(t) = sigma_min (sigma_max / sigma_min)^(t / T)`; started at `x_0`, the marginal has
    `alpha = 1` and `sigma(t) = sqrt(sigma_VE(t)^2 - sigma_min^2)` exactly; prior `N(0, sigma_max^2 I)`.
    """

    sigma_min: Array = eqx.field(default=0.01, converter=_as_leaf)
    sigma_max: Array = eqx.field(default=50.0, converter=_as_leaf)
    T: float = eqx.field(default=1.0, static=True, converter=_as_static)

    def __check_init__(self):
        _check_range("sigma_min", self.sigma_min, "sigma_max", self.sigma_max)
        check_scalar(self.T, "T", positive=True)

    @property
    def prior_std(self):
        return self.sigma_max

    def _log_ratio(self) -> Array:
        return jnp.log(self.sigma_max / self.sigma_min)

    def noise_level(self, t: ArrayLike) -> Array:
        """`sigma_VE(t) = sigma_min (sigma_max / sigma_min)^(t / T)`."""
        return self.sigma_min * jnp.exp(self._t(t) / self.T * self._log_ratio())

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        t = self._t(t)
        std = self.sigma_min * jnp.sqrt(jnp.expm1(2.0 * t / self.T * self._log_ratio()))
        return jnp.ones_like(std), std

    def drift_coefficient(self, t: ArrayLike) -> Array:
        return jnp.zeros_like(self._t(t))

    def diffusion(self, t: ArrayLike) -> Array:
        """`g(t) = sigma_VE(t) sqrt(2 log(sigma_max / sigma_min) / T)`."""
        return self.noise_level(t) * jnp.sqrt(2.0 * self._log_ratio() / self.T)

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        """Closed form: `sigma(t) = e^{-lambda}` gives `t = T log1p(e^{-2 lambda} / sigma_min^2) / (2 log ratio)`."""
        lam = as_float_array(log_snr, "log_snr")
        x = jnp.exp(-2.0 * lam) / self.sigma_min**2
        return self.T * jnp.log1p(x) / (2.0 * self._log_ratio())


class EDM(AbstractProcess):
    """The EDM path `alpha = 1`, `sigma = t`, `t in [0, sigma_max]` (Karras et al. 2022, Table 1).

    `f = 0`, `g(t) = sqrt(2 t)`; prior `N(0, sigma_max^2 I)`; sampling ends at `sigma_min`.
    """

    sigma_min: float = eqx.field(default=0.002, static=True, converter=_as_static)
    sigma_max: float = eqx.field(default=80.0, static=True, converter=_as_static)

    def __check_init__(self):
        _check_range("sigma_min", self.sigma_min, "sigma_max", self.sigma_max)

    @property
    def T(self) -> float:
        return self.sigma_max

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    @property
    def t_eps(self) -> float:
        return self.sigma_min

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        t = self._t(t)
        return jnp.ones_like(t), t

    def drift_coefficient(self, t: ArrayLike) -> Array:
        return jnp.zeros_like(self._t(t))

    def diffusion(self, t: ArrayLike) -> Array:
        return jnp.sqrt(2.0 * self._t(t))

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        return jnp.exp(-as_float_array(log_snr, "log_snr"))


class _AbstractInterpolant(AbstractProcess):
    """Paths on `t in [0, 1]` that reach pure noise, `alpha(1) = 0`, `sigma(1) = 1`.

    The prior `N(0, I)` is exact at `t = 1`, where `lambda = -inf`; samplers start at
    `t_max = 1 - 1e-4` (`alpha(t_max) ~ 1e-4`, a prior error far below any sampler's).
    """

    @property
    def T(self) -> float:
        return 1.0

    @property
    def prior_std(self) -> float:
        return 1.0

    @property
    def t_max(self) -> float:
        return 1.0 - 1e-4


class RectifiedFlow(_AbstractInterpolant):
    """The linear path of flow matching / rectified flow: `alpha = 1 - t`, `sigma = t`.

    Lipman et al. 2023 (arXiv:2210.02747); Liu et al. 2023 (arXiv:2209.03003). The conditional
    velocity is `d x_t / dt = eps - x_0`; `lambda = log((1 - t) / t)`, `t = sigmoid(-lambda)`.
    """

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        t = self._t(t)
        return 1.0 - t, t

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        return jax.nn.sigmoid(-as_float_array(log_snr, "log_snr"))


class Cosine(_AbstractInterpolant):
    """The cosine path `alpha = cos(pi t / 2)`, `sigma = sin(pi t / 2)` (variance preserving).

    The continuous form of Nichol & Dhariwal 2021 (arXiv:2102.09672) without the offset `s`;
    `lambda = -log tan(pi t / 2)`, `t = (2 / pi) arctan(e^{-lambda})`.
    """

    def marginal(self, t: ArrayLike) -> tuple[Array, Array]:
        t = self._t(t)
        return jnp.cos(0.5 * math.pi * t), jnp.sin(0.5 * math.pi * t)

    def drift_coefficient(self, t: ArrayLike) -> Array:
        return -0.5 * math.pi * jnp.tan(0.5 * math.pi * self._t(t))

    def t_from_log_snr(self, log_snr: ArrayLike) -> Array:
        return (2.0 / math.pi) * jnp.arctan(jnp.exp(-as_float_array(log_snr, "log_snr")))
