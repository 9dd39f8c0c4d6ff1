"""Conditional generation (notes, topic 6): classifier guidance, classifier-free guidance, inpainting.

Bayes' rule for the noised marginals gives the conditional score
`grad log p_t(x | y) = grad log p_t(x) + grad_x log p_t(y | x)`; guidance scales the second term.
Each combinator takes a `Model` and returns a `Model` on the same process, so every sampler and
the likelihood take a guided model unchanged, whatever the prediction kind. The labels, the
scale and the known data are array leaves, so under `eqx.filter_jit` (which the samplers use)
changing them does not recompile, and a traced weight works under `jit` and `vmap`.

Shapes: `x: [B, *event]`, `t: [B]`, labels `y`: an integer scalar or `[B]`.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from diffjax._checks import (
    as_float_array,
    check_callable,
    check_int,
    check_key,
    check_knob,
    check_labels,
    expand_to,
    is_concrete,
)
from diffjax._typing import Scalar
from diffjax.model import Model
from diffjax.processes import AbstractMarginal

__all__ = [
    "autoguidance",
    "classifier_free",
    "classifier_guidance",
    "drop_labels",
    "inpainting_projection",
]


# ----------------------------------------------------------------------------- checks


def _check_model(model, name: str = "model") -> Model:
    if not isinstance(model, Model):
        raise TypeError(
            f"`{name}` must be a diffjax.Model, got {type(model).__name__}; wrap a network as "
            "dj.Model(fn, process, prediction=...)."
        )
    return model


def _check_process(process) -> AbstractMarginal:
    if not isinstance(process, AbstractMarginal):
        raise TypeError(
            f"`process` must be a diffjax process or schedule, got {type(process).__name__}."
        )
    return process


def _labels_for(y: Array, x: Array) -> Array:
    """Labels `[B]` for a batch `x: [B, *event]` (a scalar label is broadcast)."""
    if y.ndim == 1 and y.shape[0] != x.shape[0]:
        raise ValueError(f"`y` must be a scalar or have shape [B] = [{x.shape[0]}], got {y.shape}.")
    return jnp.broadcast_to(y, x.shape[:1])


def _max_label(y: Array) -> int | None:
    """The largest label when `y` holds values now (outside `jit`), else None."""
    return int(np.max(np.asarray(y))) if is_concrete(y) and y.size else None


def _classifier_grad(
    log_prob_fn: Callable, x: Array, t: Array, y: Array, y_max: int | None
) -> Array:
    """`grad_x log p_t(y | x)` per example: `[B, *event]`.

    `log_prob_fn(x, t) -> [B, C]` returns logits or log-probabilities (`log_softmax` is applied,
    which leaves normalised log-probabilities unchanged). The examples are independent, so the
    gradient of the summed log-probabilities is the per-example gradient.
    """

    def total(x_):
        logits = log_prob_fn(x_, t)
        if getattr(logits, "ndim", None) != 2 or logits.shape[0] != x_.shape[0]:
            raise ValueError(
                f"`log_prob_fn` must return [B, num_classes] = [{x_.shape[0]}, C], "
                f"got {getattr(logits, 'shape', type(logits).__name__)}."
            )
        if y_max is not None and y_max >= logits.shape[1]:
            raise ValueError(
                f"`y` must be a class of the classifier, in 0..{logits.shape[1] - 1}; got {y_max}."
            )
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return jnp.sum(jnp.take_along_axis(log_probs, y[:, None], axis=-1))

    return jax.grad(total)(x)


# ----------------------------------------------------------------------------- classifier guidance


class _ClassifierGuidance(eqx.Module):
    """`s(x, t) + scale grad_x log p_t(y | x)`, the guided score."""

    model: Model
    log_prob_fn: Callable
    y: Array
    scale: Array

    def __call__(self, x, t):
        x = as_float_array(x, "x")
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        y = _labels_for(self.y, x)
        grad = _classifier_grad(self.log_prob_fn, x, t, y, _max_label(self.y))
        return self.model.score(x, t) + self.scale * grad


def classifier_guidance(
    model: Model, log_prob_fn: Callable, y: ArrayLike, scale: Scalar = 1.0
) -> Model:
    r"""The model of `p_t(x) p_t(y | x)^scale`: score `s(x, t) + scale grad_x log p_t(y | x)`.

    Notes, topic 6: $\nabla \log p_t(x \mid y) = \nabla \log p_t(x) + \nabla_x \log p_t(y \mid x)$
    (Bayes' rule; Song et al. 2021, arXiv:2011.13456, eq. 14; Dhariwal & Nichol 2021,
    arXiv:2105.05233, Algorithm 2 in eps form). `scale = 1` is the exact conditional score when
    both the model and the classifier are exact; `scale = 0` is unconditional; larger scales
    sample from `p_t(x) p_t(y | x)^scale`, concentrated on confidently classified points.

    Args:
        model: the unconditional `Model` (any prediction kind, any process).
        log_prob_fn: `fn(x, t) -> [B, C]`, a noise-conditional classifier (logits or
            log-probabilities of `p_t(y | x_t)`) called with the model's process time `t`.
        y: integer labels in `0..C-1`, a scalar or `[B]`.
        scale: guidance scale `>= 0` (may be traced).

    Returns:
        a score `Model` on `model.process`, for every sampler and the likelihood.

    Raises:
        TypeError: a non-Model, a non-callable classifier, non-integer labels or a non-scalar
            scale.
        ValueError: labels of rank > 1 or negative, a negative or non-finite scale; when a
            sampler first evaluates it (before compiling), labels that do not match the batch
            or the classifier's number of classes.
    """
    model = _check_model(model)
    guided = _ClassifierGuidance(
        model,
        check_callable(log_prob_fn, "log_prob_fn"),
        check_labels(y, "y"),
        check_knob(scale, "scale", 0.0),
    )
    return Model(guided, model.process, "score")


# ----------------------------------------------------------------------------- classifier-free


class _ClassifierFree(eqx.Module):
    model: Model
    y: Array
    null_label: int = eqx.field(static=True)
    weight: Array
    interval: tuple[Array, Array] | None

    def __call__(self, x, t):
        x = as_float_array(x, "x")
        b = x.shape[0]
        labels = _labels_for(self.y, x)
        t = jnp.broadcast_to(jnp.asarray(t), (b,))
        both = self.model(
            jnp.concatenate([x, x]),
            jnp.concatenate([t, t]),
            jnp.concatenate([labels, jnp.full_like(labels, self.null_label)]),
        )
        cond, uncond = both[:b], both[b:]
        return cond + _interval_weight(self.weight, self.interval, t, x) * (cond - uncond)


def _interval_weight(weight: Array, interval, t: Array, x: Array) -> Array:
    """`weight` where `lo <= t <= hi` and 0 elsewhere, per example, broadcast to `x`."""
    if interval is None:
        return weight
    lo, hi = interval
    return expand_to(jnp.where((t >= lo) & (t <= hi), weight, 0.0), x)


def _check_interval(interval) -> tuple[Array, Array] | None:
    """`(t_lo, t_hi)` with `0 <= t_lo <= t_hi` (process times; may be traced) or None."""
    if interval is None:
        return None
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise TypeError(f"`interval` must be a pair (t_lo, t_hi) of times, got {interval!r}.")
    lo, hi = (check_knob(v, "interval", 0.0) for v in interval)
    if is_concrete(lo) and is_concrete(hi) and float(lo) > float(hi):
        raise ValueError(f"`interval` must have t_lo <= t_hi, got {tuple(interval)}.")
    return lo, hi


def classifier_free(
    model: Model,
    y: ArrayLike,
    null_label: int,
    weight: Scalar = 1.0,
    *,
    interval: tuple[Scalar, Scalar] | None = None,
) -> Model:
    r"""Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598, eq. 6).

    `eps~(x, t) = (1 + w) eps(x, t, y) - w eps(x, t, null)`: with `w = 0` the conditional model.
    In score form, `s~ = s(x | y) + w (s(x | y) - s(x))` is the score of
    `p_t(x | y) p_t(y | x)^w` with the implicit classifier `p_t(y | x) ∝ p_t(x | y) / p_t(x)`, so
    `w` here is classifier guidance's `scale - 1`. Every prediction kind is affine in eps at
    fixed `(x_t, t)`, so the same combination of raw outputs serves eps, x0, score, v and
    velocity models. Both branches go through the network in ONE call on the `[2B, ...]`
    batch `[x, x]` with labels `[y, null]`.

    Args:
        model: a conditional `Model`, called as `model(x, t, labels)`, trained with label
            dropout to `null_label` (`losses.dsm(..., label_dropout=p, null_label=...)`).
        y: integer labels, a scalar or `[B]`.
        null_label: the label meaning "no condition" (`num_classes` for `diffjax.nets`).
        weight: guidance weight `w >= 0` (may be traced).
        interval: optional `(t_lo, t_hi)` in process time: guidance only there, the conditional
            model elsewhere (Kynkäänniemi et al. 2024, arXiv:2404.07724: guiding only at
            intermediate noise levels keeps the diversity that guidance at high noise removes).

    Returns:
        a `Model` of the same prediction kind on the same process, without label argument.
    """
    model = _check_model(model)
    guided = _ClassifierFree(
        model,
        check_labels(y, "y", num_classes=check_int(null_label, "null_label") + 1),
        check_int(null_label, "null_label"),
        check_knob(weight, "weight", 0.0),
        _check_interval(interval),
    )
    return Model(guided, model.process, model.prediction)


class _Autoguidance(eqx.Module):
    model: Model
    weak: Model
    weight: Array
    interval: tuple[Array, Array] | None

    def __call__(self, x, t, *args):
        x = as_float_array(x, "x")
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        good = self.model(x, t, *args)
        weak = self.weak.predict(self.model.prediction, x, t, *args)
        return good + _interval_weight(self.weight, self.interval, t, x) * (good - weak)


def autoguidance(
    model: Model,
    weak: Model,
    weight: Scalar = 1.0,
    *,
    interval: tuple[Scalar, Scalar] | None = None,
) -> Model:
    r"""Autoguidance (Karras et al. 2024, arXiv:2406.02507, eq. 2): guide a model with a weaker one.

    `D~ = D + w (D - D_weak)`, i.e. `D_1 w' + D_0 (1 - w')` with `w' = 1 + w` in the paper's
    notation, where `D_weak` is a smaller or less trained version of the same model (same
    conditioning). Every prediction kind is affine in `(x0, eps)` at fixed `(x_t, t)`, so the
    combination is taken on `model`'s own kind (the weak model's output is converted to it, and
    moved to `model`'s process by log-SNR matching if it is on another). Extra arguments
    (labels) go to both. `w = 0` is `model`; `interval` as in `classifier_free`.

    Returns:
        a `Model` of `model`'s kind on `model`'s process.
    """
    model, weak = _check_model(model), _check_model(weak, "weak")
    if not model.is_continuous and weak.process is not model.process:
        if not eqx.tree_equal(weak.process, model.process):
            raise ValueError("`weak` must be on the schedule of `model`.")
    elif model.is_continuous:
        weak = weak.on(model.process)
    guided = _Autoguidance(
        model, weak, check_knob(weight, "weight", 0.0), _check_interval(interval)
    )
    return Model(guided, model.process, model.prediction)


def drop_labels(key, labels: ArrayLike, p: Scalar, null_label: int) -> Array:
    """Replace each label by `null_label` with probability `p` (label dropout, Ho & Salimans 2022).

    Training a conditional model on the dropped labels teaches it both `eps(x, t, y)` and the
    unconditional `eps(x, t, null)` for `classifier_free`. Returns labels of `labels`' shape
    and dtype.
    """
    key = check_key(key)
    null_label = check_int(null_label, "null_label")
    labels = check_labels(labels, num_classes=null_label + 1)
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
        raise TypeError(f"`p` must be a float, got {type(p).__name__}.")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`p` must lie in [0, 1], got {p}.")
    drop = jax.random.bernoulli(key, p, labels.shape)
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


# ----------------------------------------------------------------------------- inpainting


class _Replacement(eqx.Module):
    process: AbstractMarginal
    x_known: Array
    mask: Array

    def __call__(self, key, x, t):
        x = as_float_array(x, "x")
        try:
            shape = jnp.broadcast_shapes(self.mask.shape, self.x_known.shape, x.shape)
        except ValueError as err:
            raise ValueError(
                f"`x_known` {self.x_known.shape} and `mask` {self.mask.shape} must broadcast "
                f"against the sampled batch {x.shape}."
            ) from err
        if shape != x.shape:
            raise ValueError(
                f"`x_known` {self.x_known.shape} and `mask` {self.mask.shape} broadcast to "
                f"{shape}, larger than the sampled batch {x.shape}."
            )
        t = jnp.broadcast_to(jnp.asarray(t), x.shape[:1])
        a, s = self.process.marginal(t)
        eps = jax.random.normal(key, x.shape, x.dtype)
        known = expand_to(a, x) * self.x_known + expand_to(s, x) * eps
        return jnp.where(self.mask, known, x)


def inpainting_projection(process, x_known: ArrayLike, mask: ArrayLike) -> Callable:
    """Replacement for imputation: put forward-noised known values back after each step.

    Returns `project(key, x, t) -> x` with, where `mask` is true,
    `x = alpha(t) x_known + sigma(t) eps` (a fresh draw of `q(x_t | x_0 = x_known)`) and the
    unknown entries untouched (the "replacement" method, Song et al. 2021, arXiv:2011.13456,
    App. I.2). At `t = 0` (`alpha = 1`, `sigma = 0`) the known values are restored exactly.
    Pass it as `projection=` to `samplers.ddpm`, `ddim`, `reverse_sde` or `predictor_corrector`.

    Replacement is approximate: the unknown entries follow the joint score at the noisy known
    values, not the score of `p_t(x_unknown | x_known)`; they are exact when the unknown entries
    are independent of the known ones.

    Args:
        process: the schedule or process of the sampler's model.
        x_known: `[B, *event]`, or any shape that broadcasts against the batch (`[*event]` is
            shared by the batch); the values where `mask` is true (others are ignored).
        mask: boolean, broadcastable against `x_known` and the batch; true where known.
    """
    process = _check_process(process)
    x_known = as_float_array(x_known, "x_known")
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"`mask` must be a boolean array, got dtype {mask.dtype}.")
    try:
        jnp.broadcast_shapes(mask.shape, x_known.shape)
    except ValueError as err:
        raise ValueError(
            f"`mask` of shape {mask.shape} does not broadcast against `x_known` {x_known.shape}."
        ) from err
    return _Replacement(process, x_known, mask)
