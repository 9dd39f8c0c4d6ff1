"""Training objectives: denoising score matching, the DDPM loss and bound, the VAE ELBO.

Every loss is a pure function `(params, apply_fn, key, data, ...) -> (loss, metrics)` with a
scalar `loss` (the mean over the batch of a per-example loss) and a dict of scalar metrics;
`jax.grad(loss_fn, has_aux=True)` differentiates it. The key is split inside: the same key
gives the same times and noise, whatever the sharding of the batch.

Forward process: `x_t = a x_0 + s eps` with `a = alpha(t)`, `s = sigma(t)`. A network
predicts one of `model.PREDICTIONS` (`eps`, `x0`, `score`, `v`, `velocity`); all are affine in
`eps` at fixed `(x_t, t)`, so an error in any of them is a `t`-dependent multiple of the eps
error `eps_hat - eps`:
    x0: `s^2 / a^2`,  score: `1 / s^2`,  v: `(a^2 + s^2)^2 / a^2`,
    velocity: `(a s' - s a')^2 / a^2`  (times `||eps_hat - eps||^2`).
Every loss below is `E_t[w(t) ||eps_hat - eps||^2]` for some positive `w(t)`, so its minimiser
over functions is `eps_hat(x_t, t) = E[eps | x_t]`, i.e. the exact score
`grad log p_t(x_t) = -E[eps | x_t] / s`, for every prediction type and weighting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from diffjax._checks import (
    LOG_2PI,
    as_float_array,
    check_callable,
    check_choice,
    check_int,
    check_key,
    check_knob,
    check_labels,
    check_positive_int,
    check_shape_preserving,
    check_times,
    expand_to,
    is_concrete,
    sum_event,
)
from diffjax._typing import Key, Scalar
from diffjax.forward import q_posterior, q_sample
from diffjax.guidance import drop_labels
from diffjax.model import PREDICTIONS, EDMDenoiser, Model, from_x0_eps, to_x0_eps
from diffjax.processes import EDM, AbstractProcess, RectifiedFlow
from diffjax.schedules import DiscreteSchedule

__all__ = [
    "WEIGHTINGS",
    "VAEApply",
    "classifier",
    "ddpm",
    "TIME_SAMPLINGS",
    "ddpm_vlb",
    "dsm",
    "edm",
    "flow_matching",
    "vae_elbo",
]

WEIGHTINGS = ("simple", "likelihood", "snr", "min_snr")
"""The `weighting` choices of `dsm` over time (see `dsm`)."""

# Grid size of the tabulated inverse CDF used for importance-sampled times.
_IS_GRID = 2048


# ----------------------------------------------------------------------------- checks


def _check_data(x0: ArrayLike, name: str = "x0") -> Array:
    x0 = as_float_array(x0, name)
    if x0.ndim < 1 or x0.shape[0] == 0:
        raise ValueError(f"`{name}` must have shape [B, *event] with B >= 1, got {x0.shape}.")
    return x0


def _check_labels(labels, batch: int, null_label) -> Array | None:
    """`labels` (or None) with a batch axis, in `[0, null_label]` when a null label is given."""
    if labels is None:
        return None
    num_classes = None if null_label is None else check_int(null_label, "null_label") + 1
    return check_labels(labels, batch=batch, num_classes=num_classes)


def _dropout_labels(key, labels, label_dropout, null_label) -> tuple[Array, Array | None]:
    """Classifier-free training: `labels` with each replaced by `null_label` w.p. `label_dropout`.

    Returns `(key, labels)`; with `label_dropout = 0` both are returned unchanged (the loss draws
    the same times and noise as without the option), else the dropout key is split off `key`.
    """
    if isinstance(label_dropout, bool) or not isinstance(label_dropout, (int, float)):
        raise TypeError(f"`label_dropout` must be a float, got {type(label_dropout).__name__}.")
    if not 0.0 <= label_dropout <= 1.0:
        raise ValueError(f"`label_dropout` must lie in [0, 1], got {label_dropout}.")
    if label_dropout == 0.0:
        return key, labels
    if labels is None or null_label is None:
        raise ValueError("`label_dropout` > 0 needs `labels` and the `null_label` to drop to.")
    key, drop_key = jax.random.split(key)
    return key, drop_labels(drop_key, labels, float(label_dropout), null_label)


def _apply(apply_fn, params, x_t: Array, t: Array, labels, name: str = "apply_fn") -> Array:
    """`apply_fn(params, x_t, t[, labels])`, checked to return an array of `x_t`'s shape."""
    out = apply_fn(params, x_t, t) if labels is None else apply_fn(params, x_t, t, labels)
    if not hasattr(out, "shape") or out.shape != x_t.shape:
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"`{name}` must return an array of the shape of x {x_t.shape}, got {shape}."
        )
    return out


# ----------------------------------------------------------------------------- core


def _denoising_error(
    out: Array,
    x0: Array,
    eps: Array,
    x_t: Array,
    coeffs: tuple,
    *,
    prediction: str,
    weighting: str,
    eps_weight: Array | None,
    reduce_mean: bool,
) -> tuple[Array, Array]:
    """Per-example weighted error `[B]` and unweighted eps error `[B]` (mean over the event).

    `coeffs = (a, s, a', s')` are broadcast against `x_t`. With `weighting="simple"` the error
    is measured on the network's own target; otherwise on the eps error with the per-example
    weight `eps_weight` `[B]`.
    """
    eps_hat = to_x0_eps(prediction, out, x_t, *coeffs)[1]
    eps_sq = jnp.mean((eps_hat - eps).reshape(eps.shape[0], -1) ** 2, axis=1)
    if weighting == "simple":
        sq = (out - from_x0_eps(prediction, x0, eps, *coeffs)) ** 2
    else:
        sq = expand_to(eps_weight, x_t) * (eps_hat - eps) ** 2
    per_example = sum_event(sq)
    if reduce_mean:
        per_example = per_example / math.prod(x_t.shape[1:])
    return per_example, eps_sq


def _likelihood_times(sde: AbstractProcess, key, batch: int, t_eps: Scalar) -> tuple[Array, Array]:
    """Times with density `p(t) ∝ g(t)^2 / s(t)^2` on `[t_eps, T]` and `h(t) / p(t)`.

    The CDF of `h = g^2 / s^2` is tabulated with the trapezoid rule on a geometric grid
    (`h ~ 1/t` near 0 for VP and sub-VP), and `t` is drawn by inverting the piecewise-linear
    CDF, i.e. from the piecewise-constant density `p` it defines. The returned ratio
    `h(t) / p(t)` uses that same `p`, so the importance weight is exact for any SDE; for VP,
    `p ∝ -d log-SNR / dt`, and the table reproduces the closed form to the grid error.
    """
    grid = jnp.geomspace(t_eps, sde.T, _IS_GRID)
    h = sde.diffusion(grid) ** 2 / sde.marginal(grid)[1] ** 2
    cells = 0.5 * (h[1:] + h[:-1]) * jnp.diff(grid)
    cdf = jnp.concatenate([jnp.zeros((1,), cells.dtype), jnp.cumsum(cells)])
    total = cdf[-1]
    u = jax.random.uniform(key, (batch,), cdf.dtype)
    t = jnp.interp(u * total, cdf, grid)
    cell = jnp.clip(jnp.searchsorted(grid, t, side="right") - 1, 0, _IS_GRID - 2)
    density = cells[cell] / jnp.diff(grid)[cell] / total
    h_t = sde.diffusion(t) ** 2 / sde.marginal(t)[1] ** 2
    return t, h_t / density


def _regression_loss(
    params, apply_fn, x0, t, eps, coeffs, labels, prediction, weighting, eps_weight, reduce_mean
) -> tuple[Array, dict[str, Array]]:
    """Noise `x_0` to `x_t = a x_0 + s eps` (`coeffs = (a, s, a', s')`: `[B]`), regress the network."""
    coeffs = tuple(None if c is None else expand_to(c, x0) for c in coeffs)
    x_t = coeffs[0] * x0 + coeffs[1] * eps
    out = _apply(apply_fn, params, x_t, t, labels)
    per_example, eps_sq = _denoising_error(
        out,
        x0,
        eps,
        x_t,
        coeffs,
        prediction=prediction,
        weighting=weighting,
        eps_weight=eps_weight,
        reduce_mean=reduce_mean,
    )
    loss = jnp.mean(per_example)
    return loss, {"loss": loss, "eps_mse": jnp.mean(eps_sq)}


def dsm(
    params,
    apply_fn: Callable,
    key: Key,
    x0: ArrayLike,
    process: AbstractProcess,
    *,
    prediction: str = "eps",
    weighting: str = "simple",
    t_eps: Scalar = 1e-5,
    labels: ArrayLike | None = None,
    label_dropout: Scalar = 0.0,
    null_label: int | None = None,
    importance_sampling: bool = False,
    snr_gamma: Scalar = 5.0,
    reduce_mean: bool = True,
) -> tuple[Array, dict[str, Array]]:
    r"""Denoising score matching on a continuous Gaussian path (any process, any prediction kind).

    Draws `t ~ U[t_eps, T]` and `eps ~ N(0, I)` from `key`, forms `x_t = a x_0 + s eps`, and
    returns the batch mean of `w(t) ||eps_hat - eps||^2` (per example: summed over the event, or
    averaged with `reduce_mean=True`), where `eps_hat` is the network output converted to eps.
    Weightings (all have the exact score as minimiser):

    - `"simple"`: unit weight on the network's own target (eps, x0, score `-eps/s`, or v).
    - `"likelihood"`: $\lambda(t) = g(t)^2$ on the score error, i.e. `g^2 / s^2` on the eps
      error (Song, Durkan, Murray & Ermon 2021, arXiv:2101.09258): with `reduce_mean=False`,
      `(T - t_eps) / 2` times its expectation is the score-matching part of their bound on
      the KL divergence, up to a constant.
      With `importance_sampling=True`, `t` is drawn with density `∝ g^2 / s^2` on
      `[t_eps, T]` (tabulated inverse CDF, see `_likelihood_times`) and reweighted by
      `(g^2 / s^2) / (p(t) (T - t_eps))`: same expectation, much lower variance.
    - `"snr"`: `SNR(t) = a^2 / s^2` on the x0 error, i.e. unit weight on the eps error (the eps
      loss of Ho et al. 2020 for any parameterisation).
    - `"min_snr"`: min-SNR-gamma, `min(SNR(t), snr_gamma)` on the x0 error, i.e.
      `min(1, snr_gamma / SNR(t))` on the eps error (Hang et al. 2023, arXiv:2303.09556).

    `t_eps = 1e-5` follows the likelihood-training default of score_sde; samplers stop at a
    larger cut-off (1e-3). With `prediction="score"` and `"simple"` the weight `1/s^2` is large
    near `t_eps`: on VE (large `sigma_max`) it does not train; use `"likelihood"`.
    With `prediction="velocity"` and `"simple"` this is conditional flow matching (Lipman et
    al. 2023, arXiv:2210.02747): the target is `a' x_0 + s' eps`.

    Args:
        params: the network parameters (any pytree).
        apply_fn: `apply_fn(params, x_t, t) -> [B, *event]`, or
            `apply_fn(params, x_t, t, labels)` when `labels` is given; `t: [B]` float.
        key: a PRNG key.
        x0: `[B, *event]` clean data.
        process: a continuous process (`VPSDE`, `EDM`, `RectifiedFlow`, ...).
        prediction: what the network outputs, one of `model.PREDICTIONS`.
        weighting: one of `WEIGHTINGS`.
        labels: optional `[B]` integer labels for a class-conditional network.
        label_dropout, null_label: for classifier-free guidance (Ho & Salimans 2022), each
            label is replaced by `null_label` with probability `label_dropout`
            (`guidance.drop_labels`, drawn from `key`), so one network learns both
            `eps(x, t, y)` and `eps(x, t, null)`.

    Returns:
        `(loss, {"loss", "eps_mse"})`; `eps_mse` is the unweighted mean square eps error per
        dimension, comparable across predictions and weightings.
    """
    check_callable(apply_fn, "apply_fn")
    key = check_key(key)
    x0 = _check_data(x0)
    if not isinstance(process, AbstractProcess):
        raise TypeError(
            f"`process` must be a continuous process (VPSDE, EDM, ...), got {type(process).__name__}."
        )
    sde = process
    check_choice(prediction, "prediction", PREDICTIONS)
    check_choice(weighting, "weighting", WEIGHTINGS)
    t_eps, _ = check_times(sde, t_eps, sde.T)
    if importance_sampling and weighting != "likelihood":
        raise ValueError("`importance_sampling=True` requires `weighting='likelihood'`.")
    snr_gamma = check_knob(snr_gamma, "snr_gamma", 0.0, strict=True)
    labels = _check_labels(labels, x0.shape[0], null_label)
    key, labels = _dropout_labels(key, labels, label_dropout, null_label)

    batch = x0.shape[0]
    t_key, eps_key = jax.random.split(key)
    if importance_sampling:
        t, ratio = _likelihood_times(sde, t_key, batch, t_eps)
    else:
        t = jax.random.uniform(t_key, (batch,), x0.dtype, t_eps, sde.T)
    eps = jax.random.normal(eps_key, x0.shape, x0.dtype)
    coeffs = sde.marginal_derivatives(t)
    a, s = coeffs[:2]
    # Weight on ||eps_hat - eps||^2 (unused for "simple", which uses the network's own target).
    eps_weight = None
    if weighting == "likelihood":
        eps_weight = (
            ratio / (sde.T - t_eps) if importance_sampling else sde.diffusion(t) ** 2 / s**2
        )
    elif weighting == "snr":
        eps_weight = jnp.ones_like(s)
    elif weighting == "min_snr":
        eps_weight = jnp.minimum(1.0, snr_gamma * s**2 / a**2)
    return _regression_loss(
        params, apply_fn, x0, t, eps, coeffs, labels, prediction, weighting, eps_weight, reduce_mean
    )


TIME_SAMPLINGS = ("uniform", "logit_normal")
"""The `time_sampling` choices of `flow_matching`: how the training times are drawn."""


def _flow_times(key, batch: int, dtype, t_eps, T, sampling: str, mean, std) -> Array:
    """`t` on `[t_eps, T]`: uniform, or `t_eps + (T - t_eps) sigmoid(mean + std n)` with
    `n ~ N(0, 1)` (logit-normal; Esser et al. 2024, arXiv:2403.03206, eq. 19)."""
    if sampling == "uniform":
        return jax.random.uniform(key, (batch,), dtype, t_eps, T)
    u = jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,), dtype))
    return t_eps + (T - t_eps) * u


def flow_matching(
    params,
    apply_fn: Callable,
    key: Key,
    x0: ArrayLike,
    process: AbstractProcess | None = None,
    *,
    time_sampling: str = "uniform",
    logit_mean: Scalar = 0.0,
    logit_std: Scalar = 1.0,
    t_eps: Scalar = 1e-5,
    labels: ArrayLike | None = None,
    label_dropout: Scalar = 0.0,
    null_label: int | None = None,
    noise: ArrayLike | None = None,
    reduce_mean: bool = True,
) -> tuple[Array, dict[str, Array]]:
    r"""Conditional flow matching: `E_{t, x_0, eps} ||v(x_t, t) - (alpha'(t) x_0 + sigma'(t) eps)||^2`.

    Lipman et al. 2023 (arXiv:2210.02747, eq. 9 with the Gaussian path of eq. 16); on the
    default `RectifiedFlow` path the target is `eps - x_0` (Liu et al. 2023, arXiv:2209.03003).
    The conditional velocity's expectation given `x_t` is the PF-ODE velocity, so the minimiser
    is the exact `"velocity"` model of the data and the trained network is
    `Model(apply_fn, process, "velocity", params=params)`, for every continuous sampler and
    `log_prob`. Times are uniform on `[t_eps, T]` or logit-normal (`time_sampling`,
    `logit_mean`, `logit_std`; Esser et al. 2024). Labels and label dropout as in `dsm`.

    `noise`: the `eps` paired with each `x_0` (`[B, *event]`, a coupling), instead of fresh
    independent draws; with the pairs of `samplers.reflow_coupling` this is reflow (Liu et al.
    2023, §2.2): training on the model's own PF-ODE coupling straightens its paths.

    Returns:
        `(loss, {"loss", "eps_mse"})`, the loss per dimension with `reduce_mean` (else summed
        over the event).
    """
    process = RectifiedFlow() if process is None else process
    if not isinstance(process, AbstractProcess):
        raise TypeError(
            f"`process` must be a continuous process (RectifiedFlow, ...), got {type(process).__name__}."
        )
    check_callable(apply_fn, "apply_fn")
    key = check_key(key)
    x0 = _check_data(x0)
    check_choice(time_sampling, "time_sampling", TIME_SAMPLINGS)
    logit_mean = check_knob(logit_mean, "logit_mean")
    logit_std = check_knob(logit_std, "logit_std", 0.0, strict=True)
    t_eps, _ = check_times(process, t_eps, process.T)
    labels = _check_labels(labels, x0.shape[0], null_label)
    key, labels = _dropout_labels(key, labels, label_dropout, null_label)
    t_key, eps_key = jax.random.split(key)
    t = _flow_times(
        t_key, x0.shape[0], x0.dtype, t_eps, process.T, time_sampling, logit_mean, logit_std
    )
    if noise is None:
        eps = jax.random.normal(eps_key, x0.shape, x0.dtype)
    else:
        eps = as_float_array(noise, "noise").astype(x0.dtype)
        if eps.shape != x0.shape:
            raise ValueError(
                f"`noise` must have the shape of `x0` {x0.shape} (one eps per example), "
                f"got {eps.shape}."
            )
    coeffs = process.marginal_derivatives(t)
    return _regression_loss(
        params, apply_fn, x0, t, eps, coeffs, labels, "velocity", "simple", None, reduce_mean
    )


def edm(
    params,
    net: Callable,
    key: Key,
    x0: ArrayLike,
    process: AbstractProcess | None = None,
    *,
    sigma_data: Scalar = 0.5,
    p_mean: Scalar = -1.2,
    p_std: Scalar = 1.2,
    labels: ArrayLike | None = None,
    label_dropout: Scalar = 0.0,
    null_label: int | None = None,
    reduce_mean: bool = True,
) -> tuple[Array, dict[str, Array]]:
    r"""The EDM loss (Karras et al. 2022, arXiv:2206.00364, eq. 8 and Table 1).

    `E ||lambda(sigma)^(1/2) (D(x_0 + sigma n; sigma) - x_0)||^2` with `log sigma ~ N(p_mean,
    p_std^2)`, `lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2` and `D` the preconditioned
    denoiser of the raw network `net` (`model.EDMDenoiser`, `sd = sigma_data`), which makes the
    effective target of `net` unit-variance at every noise level. On a process other than
    `EDM` the noise level is the EDM one, `sigma = sigma(t) / alpha(t) = e^{-lambda}`, at the
    log-SNR-matched time, so the same network serves every path. The minimiser is the exact
    denoiser; sample with `edm_model(net, process, sigma_data=..., params=params)`.

    Args:
        params, net: `net(params, x_in, c_noise[, labels]) -> [B, *event]`.
        key, x0: PRNG key and `[B, *event]` data. process: default `EDM()`.
        labels, label_dropout, null_label: as in `dsm`.

    Returns:
        `(loss, {"loss", "eps_mse"})`.
    """
    process = EDM() if process is None else process
    if not isinstance(process, AbstractProcess):
        raise TypeError(f"`process` must be a continuous process, got {type(process).__name__}.")
    check_callable(net, "net")
    key = check_key(key)
    x0 = _check_data(x0)
    sd = check_knob(sigma_data, "sigma_data", 0.0, strict=True)
    p_mean = check_knob(p_mean, "p_mean")
    p_std = check_knob(p_std, "p_std", 0.0, strict=True)
    labels = _check_labels(labels, x0.shape[0], null_label)
    key, labels = _dropout_labels(key, labels, label_dropout, null_label)
    s_key, eps_key = jax.random.split(key)
    batch = x0.shape[0]
    log_sigma = p_mean + p_std * jax.random.normal(s_key, (batch,), x0.dtype)
    t = process.t_from_log_snr(-log_sigma)
    a, s = (expand_to(c, x0) for c in process.marginal(t))
    eps = jax.random.normal(eps_key, x0.shape, x0.dtype)
    x_t = a * x0 + s * eps
    denoiser = EDMDenoiser(net, process, sd.astype(x0.dtype), True)
    d = denoiser(params, x_t, t) if labels is None else denoiser(params, x_t, t, labels)
    sigma = jnp.exp(log_sigma)
    weight = (sigma**2 + sd**2) / (sigma * sd) ** 2
    per_example = weight * sum_event((d - x0) ** 2)
    eps_hat = (x_t - a * d) / s
    eps_sq = jnp.mean((eps_hat - eps).reshape(batch, -1) ** 2, axis=1)
    if reduce_mean:
        per_example = per_example / math.prod(x0.shape[1:])
    loss = jnp.mean(per_example)
    return loss, {"loss": loss, "eps_mse": jnp.mean(eps_sq)}


def ddpm(
    params,
    apply_fn: Callable,
    key: Key,
    x0: ArrayLike,
    schedule: DiscreteSchedule,
    *,
    labels: ArrayLike | None = None,
    label_dropout: Scalar = 0.0,
    null_label: int | None = None,
    prediction: str = "eps",
    reduce_mean: bool = True,
) -> tuple[Array, dict[str, Array]]:
    """The notes' DDPM training loss: `||eps - eps_theta(x_t, t)||^2` at a random step.

    Draws `t` uniform in `1..T` and `eps ~ N(0, I)` from `key`, `x_t = sqrt(alpha_bar(t)) x_0
    + sqrt(1 - alpha_bar(t)) eps`, and averages the squared error of the network's own target
    (`prediction="eps"`: Ho et al. 2020's L_simple; `"x0"`: the notes' `||x_0 - x_theta||^2`)
    over the batch (per example summed over the event, or averaged with `reduce_mean`).

    `apply_fn(params, x_t, t[, labels])` with integer `t: [B]`; `label_dropout`, `null_label`
    as in `dsm` (classifier-free training). Returns `(loss, {"loss", "eps_mse"})`.
    """
    check_callable(apply_fn, "apply_fn")
    key = check_key(key)
    x0 = _check_data(x0)
    if not isinstance(schedule, DiscreteSchedule):
        raise TypeError(f"`schedule` must be a DiscreteSchedule, got {type(schedule).__name__}.")
    check_choice(prediction, "prediction", PREDICTIONS[:4])
    labels = _check_labels(labels, x0.shape[0], null_label)
    key, labels = _dropout_labels(key, labels, label_dropout, null_label)

    t_key, eps_key = jax.random.split(key)
    t = jax.random.randint(t_key, (x0.shape[0],), 1, schedule.num_steps + 1)
    eps = jax.random.normal(eps_key, x0.shape, x0.dtype)
    coeffs = schedule.marginal(t) + (None, None)
    return _regression_loss(
        params, apply_fn, x0, t, eps, coeffs, labels, prediction, "simple", None, reduce_mean
    )


def ddpm_vlb(
    model: Model,
    key: Key,
    x0: ArrayLike,
    *,
    return_terms: bool = False,
    chunk_size: int | None = None,
) -> Array | tuple[Array, dict[str, Array]]:
    r"""The notes' variational bound on `-log p_theta(x_0)`, per example, in bits per dimension.

    `-log p_theta(x_0) <= L_T + sum_{t=2}^T L_{t-1} + L_0` with (all in nats)

    - prior: `L_T = KL(q(x_T | x_0) || N(0, I))`, in closed form;
    - diffusion: `L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))` with
      `p_theta = N(mu(x_t, x0_hat), beta~_t I)` and `x0_hat = (x_t - sqrt(1 - alpha_bar(t))
      eps_theta) / sqrt(alpha_bar(t))`; both Gaussians share the variance `beta~_t`, so
      `L_{t-1} = ||mu(x_t, x_0) - mu(x_t, x0_hat)||^2 / (2 beta~_t)`, evaluated at ONE draw
      `x_t ~ q(x_t | x_0)` per step and example (an unbiased estimate of the notes'
      `E_{q(x_t|x_0)} KL`);
    - decoder: `L_0 = -log N(x_0 | x0_hat(x_1, 1), beta_1 I)` at one draw of `x_1`: the notes'
      Gaussian decoder `N(x_0 | mu, s^2 I)` with `mu = mu(x_1, x0_hat) = x0_hat` (the posterior
      mean at `t = 1`) and `s^2 = beta_1`.

    The bound is on the continuous density of `x_0` as given (no dequantisation, no rescaling
    constant); bits per dimension = nats / (D log 2), `D = prod(event)`. Call it under
    `jax.jit` (eagerly, every small op is dispatched on its own). All steps are
    evaluated by one `lax.map` over `t`, vectorised over `chunk_size` steps at a time (default:
    at most 4096 network evaluations at once, since the network's activations, not `x_t`,
    dominate memory: a U-Net on 8x8 digits takes about 1 GB per chunk).

    Args:
        model: a `Model` on a `DiscreteSchedule` (called with integer `t: [B]` in `1..T`).
        key: a PRNG key.
        x0: `[B, *event]`.
        return_terms: also return the terms in nats: `{"prior": [B], "diffusion": [B],
            "decoder": [B], "per_step": [B, T-1]}` (`per_step[:, t-2] = L_{t-1}`).

    Returns:
        `bpd [B]`, or `(bpd, terms)`.
    """
    if not isinstance(model, Model) or not isinstance(model.process, DiscreteSchedule):
        raise TypeError(
            f"`model` must be a diffjax.Model on a DiscreteSchedule, got {model!r:.80}."
        )
    schedule = model.process
    key = check_key(key)
    x0 = _check_data(x0)
    batch, dim, num_steps = x0.shape[0], math.prod(x0.shape[1:]), schedule.num_steps
    if chunk_size is None:
        chunk_size = max(1, min(num_steps, 4096 // batch))
    chunk_size = check_positive_int(chunk_size, "chunk_size")

    check_shape_preserving(model, "model", x0.shape, jnp.int32)

    def x0_hat_at(t: Array, noise: Array) -> tuple[Array, Array]:
        t_b = jnp.full((batch,), t)
        x_t = q_sample(schedule, x0, t_b, noise)
        return x_t, model.x0(x_t, t_b)

    def step_kl(args) -> Array:
        t, k = args
        x_t, x0_hat = x0_hat_at(t, jax.random.normal(k, x0.shape, x0.dtype))
        t_b = jnp.full((batch,), t)
        mu_q, var = q_posterior(schedule, x0, x_t, t_b)
        mu_p, _ = q_posterior(schedule, x0_hat, x_t, t_b)
        return sum_event((mu_q - mu_p) ** 2) / (2.0 * var)

    dec_key, steps_key = jax.random.split(key)
    a_T, s_T = schedule.marginal(jnp.asarray(num_steps))
    prior = 0.5 * sum_event(a_T**2 * x0**2 + s_T**2 - 1.0 - jnp.log(s_T**2))

    _, x0_hat_1 = x0_hat_at(jnp.asarray(1), jax.random.normal(dec_key, x0.shape, x0.dtype))
    beta_1 = schedule.betas[0]
    decoder = 0.5 * sum_event((x0 - x0_hat_1) ** 2) / beta_1 + 0.5 * dim * (
        jnp.log(beta_1) + LOG_2PI
    )

    if num_steps > 1:
        ts = jnp.arange(2, num_steps + 1)
        keys = jax.random.split(steps_key, num_steps - 1)
        per_step = jax.lax.map(step_kl, (ts, keys), batch_size=chunk_size).T
    else:
        per_step = jnp.zeros((batch, 0), x0.dtype)
    diffusion = jnp.sum(per_step, axis=1)
    bpd = (prior + diffusion + decoder) / (dim * math.log(2.0))
    if return_terms:
        terms = {"prior": prior, "diffusion": diffusion, "decoder": decoder, "per_step": per_step}
        return bpd, terms
    return bpd


class VAEApply(NamedTuple):
    """The two pure halves of a VAE, sharing one parameter pytree.

    `encode(params, x [B, *event]) -> (mean, log_std)`, each `[B, latent]`, for
    `q(z | x) = N(mean, diag(exp(log_std)^2))`; `decode(params, z [B, latent]) -> x_mean
    [B, *event]`. From a `diffjax.nets.VAE`: `VAEApply(split(vae, method="encode")[0],
    split(vae, method="decode")[0])` with `params = split(vae)[1]`.
    """

    encode: Callable
    decode: Callable


def vae_elbo(
    params,
    vae_apply: VAEApply | tuple,
    key: Key,
    x: ArrayLike,
    *,
    obs_std: ArrayLike = 1.0,
) -> tuple[Array, dict[str, Array]]:
    r"""Negative ELBO of a VAE with a Gaussian decoder (notes, topic 1).

    `ELBO(x) = E_{q(z|x)} log N(x | decode(z), obs_std^2 I) - KL(q(z|x) || N(0, I))`: the
    reconstruction term at ONE reparameterised draw `z = mean + exp(log_std) eps`,
    `eps ~ N(0, I)` from `key` (unbiased), and the KL in closed form,
    `KL = 1/2 sum(mean^2 + exp(2 log_std) - 1 - 2 log_std)`. `ELBO(x) <= log p(x)`, with equality
    when `q(z|x)` is the exact posterior.

    Args:
        params: parameters of both halves.
        vae_apply: `VAEApply(encode, decode)` (or a plain pair).
        key: a PRNG key.
        x: `[B, *event]` data.
        obs_std: decoder standard deviation `sigma`, positive, a scalar or broadcastable to the
            event shape; for a learned `sigma`, compute it from `params` in your loss function.

    Returns:
        `(-mean ELBO, {"loss", "elbo", "reconstruction", "kl"})` (batch means, nats).
    """
    if not (isinstance(vae_apply, tuple) and len(vae_apply) == 2):
        raise TypeError("`vae_apply` must be a pair (encode, decode), e.g. `losses.VAEApply`.")
    encode, decode = (
        check_callable(f, n) for f, n in zip(vae_apply, ("encode", "decode"), strict=True)
    )
    key = check_key(key)
    x = _check_data(x, "x")
    obs_std = as_float_array(obs_std, "obs_std")
    if is_concrete(obs_std) and not bool(jnp.all(obs_std > 0)):
        raise ValueError(f"`obs_std` must be positive, got {obs_std}.")
    try:
        log_obs_std = jnp.broadcast_to(jnp.log(obs_std), x.shape)
    except ValueError as err:
        raise ValueError(
            f"`obs_std` must be a scalar or broadcast to x {x.shape}, got {obs_std.shape}."
        ) from err

    moments = encode(params, x)
    if not (isinstance(moments, tuple) and len(moments) == 2):
        raise TypeError(f"`encode` must return a pair (mean, log_std), got {type(moments).__name__}.")
    mean, log_std = moments
    if mean.shape != log_std.shape or mean.ndim != 2 or mean.shape[0] != x.shape[0]:
        raise ValueError(
            "`encode` must return (mean, log_std) of shape [B, latent] each, "
            f"got {mean.shape} and {log_std.shape}."
        )
    z = mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
    x_mean = decode(params, z)
    if not hasattr(x_mean, "shape") or x_mean.shape != x.shape:
        raise ValueError(
            f"`decode` must return an array of the shape of x {x.shape}, "
            f"got {getattr(x_mean, 'shape', type(x_mean).__name__)}."
        )
    recon = sum_event(
        -0.5 * ((x - x_mean) * jnp.exp(-log_obs_std)) ** 2 - log_obs_std - 0.5 * LOG_2PI
    )
    kl = 0.5 * jnp.sum(mean**2 + jnp.exp(2.0 * log_std) - 1.0 - 2.0 * log_std, axis=-1)
    elbo = recon - kl
    loss = -jnp.mean(elbo)
    metrics = {
        "loss": loss,
        "elbo": jnp.mean(elbo),
        "reconstruction": jnp.mean(recon),
        "kl": jnp.mean(kl),
    }
    return loss, metrics


def classifier(
    params,
    apply_fn: Callable,
    key: Key,
    x0: ArrayLike,
    labels: ArrayLike,
    process,
    *,
    t_eps: Scalar = 1e-5,
) -> tuple[Array, dict[str, Array]]:
    """Cross-entropy of a noise-conditional classifier `log p_t(y | x_t)` (for guidance).

    Draws `t` (uniform in `1..T` for a `DiscreteSchedule`, in `[t_eps, T]` for an SDE) and
    `eps` from `key`, and returns the batch mean of `-log softmax(apply_fn(params, x_t, t))[y]`;
    its minimiser is the exact `p_t(y | x_t)`.

    Args:
        apply_fn: `apply_fn(params, x_t, t) -> logits [B, num_classes]`.
        labels: `[B]` integer classes.
        process: a `DiscreteSchedule` or an `AbstractSDE`.

    Returns:
        `(loss, {"loss", "accuracy"})`.
    """
    check_callable(apply_fn, "apply_fn")
    key = check_key(key)
    x0 = _check_data(x0)
    labels = check_labels(labels, batch=x0.shape[0])
    if labels.ndim != 1:
        raise ValueError(f"`labels` must be integer classes of shape [B], got {labels.shape}.")
    t_key, eps_key = jax.random.split(key)
    batch = x0.shape[0]
    if isinstance(process, DiscreteSchedule):
        t = jax.random.randint(t_key, (batch,), 1, process.num_steps + 1)
    elif isinstance(process, AbstractProcess):
        t_eps, _ = check_times(process, t_eps, process.T)
        t = jax.random.uniform(t_key, (batch,), x0.dtype, t_eps, process.T)
    else:
        raise TypeError(f"`process` must be a schedule or an SDE, got {type(process).__name__}.")
    x_t = q_sample(process, x0, t, jax.random.normal(eps_key, x0.shape, x0.dtype))
    logits = apply_fn(params, x_t, t)
    if not hasattr(logits, "shape") or logits.ndim != 2 or logits.shape[0] != batch:
        raise ValueError(
            f"`apply_fn` must return logits of shape [B={batch}, num_classes], "
            f"got {getattr(logits, 'shape', type(logits).__name__)}."
        )
    labels = check_labels(labels, batch=batch, num_classes=logits.shape[1])
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    loss = jnp.mean(nll)
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
    return loss, {"loss": loss, "accuracy": accuracy}
