"""Conditional generation (notes, topic 6): classifier guidance, classifier-free guidance, inpainting.

Bayes' rule for the noised marginals gives the conditional score
`grad log p_t(x | y) = grad log p_t(x) + grad_x log p_t(y | x)`; guidance scales the second term.
Each function here returns a new model function, so every sampler takes a guided model unchanged.

Shapes: `x: [B, *event]`, `t: [B]`, labels `y`: an integer scalar or `[B]`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike

from diffjax._core import (
    AbstractForwardProcess,
    as_float_array,
    check_key,
    expand_to,
)

__all__ = [
    "classifier_free",
    "classifier_guidance",
    "classifier_guidance_eps",
    "drop_labels",
    "inpainting_projection",
]


def _check_labels(y: ArrayLike, name: str = "y") -> Array:
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"`{name}` must hold integer class labels, got dtype {y.dtype}.")
    if y.ndim > 1:
        raise ValueError(f"`{name}` must be a scalar or have shape [B], got {y.shape}.")
    return y


def _check_scale(scale, name: str) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"`{name}` must be a float, got {type(scale).__name__}.")
    if scale < 0:
        raise ValueError(f"`{name}` must be non-negative, got {scale}.")
    return float(scale)


def _labels_for(y: Array, x: Array) -> Array:
    if y.ndim == 1 and y.shape[0] != x.shape[0]:
        raise ValueError(f"`y` must have shape [B] = [{x.shape[0]}], got {y.shape}.")
    return jnp.broadcast_to(y, x.shape[:1])


def _classifier_grad(log_prob_fn: Callable, x: Array, t: Array, y: Array) -> Array:
    """`grad_x log p_t(y | x)` per example; `log_prob_fn(x, t) -> [B, C]` (log-probs or logits)."""

    def total(x_):
        logits = log_prob_fn(x_, t)
        if logits.ndim != 2 or logits.shape[0] != x_.shape[0]:
            raise ValueError(
                f"the classifier must return [B, num_classes] = [{x_.shape[0]}, C], got {logits.shape}."
            )
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        return jnp.sum(jnp.take_along_axis(log_probs, y[:, None], axis=-1))

    # The examples are independent, so the gradient of the sum is the per-example gradient.
    return jax.grad(total)(x)


def classifier_guidance(
    score_fn: Callable, log_prob_fn: Callable, y: ArrayLike, scale: float = 1.0
) -> Callable:
    """Score of `p_t(x) p_t(y | x)^scale`: `s(x, t) + scale * grad_x log p_t(y | x)`.

    Dhariwal & Nichol 2021 (arXiv:2105.05233). `scale = 1` is the exact conditional score when
    the classifier is exact; `scale = 0` is unconditional; larger scales sharpen.

    Args:
        score_fn: `fn(x, t) -> [B, *event]`, the unconditional score.
        log_prob_fn: `fn(x, t) -> [B, C]`, a noise-conditional classifier (logits or log-probs).
        y: integer labels, scalar or `[B]`.
        scale: guidance scale `>= 0`.
    """
    y = _check_labels(y)
    scale = _check_scale(scale, "scale")
    for name, fn in (("score_fn", score_fn), ("log_prob_fn", log_prob_fn)):
        if not callable(fn):
            raise TypeError(f"`{name}` must be callable, got {type(fn).__name__}.")

    def guided(x, t):
        x = as_float_array(x, "x")
        t = jnp.broadcast_to(t, x.shape[:1])
        return score_fn(x, t) + scale * _classifier_grad(log_prob_fn, x, t, _labels_for(y, x))

    return guided


def classifier_guidance_eps(
    eps_fn: Callable, log_prob_fn: Callable, y: ArrayLike, process, scale: float = 1.0
) -> Callable:
    """Eps form of classifier guidance for DDPM/DDIM/DPM-Solver: `eps - scale * std(t) grad log p(y|x_t)`.

    Since `score = -eps / std(t)`, this is `classifier_guidance` written for an eps model
    (Dhariwal & Nichol 2021, Algorithm 2).
    """
    y = _check_labels(y)
    scale = _check_scale(scale, "scale")
    if not isinstance(process, AbstractForwardProcess):
        raise TypeError(f"`process` must be a schedule or an SDE, got {type(process).__name__}.")

    def guided(x, t):
        x = as_float_array(x, "x")
        t = jnp.broadcast_to(process.check_time(t), x.shape[:1])
        std = expand_to(process.marginal(t)[1], x)
        grad = _classifier_grad(log_prob_fn, x, t, _labels_for(y, x))
        return eps_fn(x, t) - scale * std * grad

    return guided


def classifier_free(
    eps_fn: Callable, y: ArrayLike, null_label: int, weight: float = 1.0
) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598).

    `eps~(x, t) = (1 + w) eps(x, t, y) - w eps(x, t, null)`; with `w = 0` the conditional model.
    Both branches go through the network in one call on a `[2B, ...]` batch.

    Args:
        eps_fn: `fn(x, t, y) -> [B, *event]`, a model trained with label dropout to `null_label`.
        y: integer labels, scalar or `[B]`.
        null_label: the label meaning "no condition".
        weight: guidance weight `w >= 0`. The same formula serves score or x0 models.
    """
    y = _check_labels(y)
    weight = _check_scale(weight, "weight")
    if isinstance(null_label, bool) or not isinstance(null_label, int):
        raise TypeError(f"`null_label` must be an int, got {type(null_label).__name__}.")

    def guided(x, t):
        x = as_float_array(x, "x")
        b = x.shape[0]
        labels = _labels_for(y, x)
        both = eps_fn(
            jnp.concatenate([x, x]),
            jnp.concatenate([jnp.broadcast_to(t, (b,))] * 2),
            jnp.concatenate([labels, jnp.full_like(labels, null_label)]),
        )
        cond, uncond = both[:b], both[b:]
        return (1.0 + weight) * cond - weight * uncond

    return guided


def drop_labels(key, labels: ArrayLike, p: float, null_label: int) -> Array:
    """Replace each label by `null_label` with probability `p` (label dropout for classifier-free training)."""
    key = check_key(key)
    labels = _check_labels(labels, "labels")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"`p` must lie in [0, 1], got {p}.")
    return jnp.where(jax.random.bernoulli(key, p, labels.shape), null_label, labels)


def inpainting_projection(process, x_known: ArrayLike, mask: ArrayLike) -> Callable:
    """Replacement for imputation: put the forward-noised known values back after each step.

    Returns `project(key, x, t) -> x` with `x[mask] = mean_coeff(t) x_known + std(t) eps` and the
    unknown entries untouched (Song et al. 2021, arXiv:2011.13456, App. I.2). At `t = 0` the
    known values are restored exactly. The samplers take it as their `projection=` argument.

    Args:
        x_known: `[B, *event]` (or `[*event]`, shared by the batch) values where `mask` is true.
        mask: boolean, broadcastable to `x_known`; true where the value is known.
    """
    if not isinstance(process, AbstractForwardProcess):
        raise TypeError(f"`process` must be a schedule or an SDE, got {type(process).__name__}.")
    x_known = as_float_array(x_known, "x_known")
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"`mask` must be boolean, got dtype {mask.dtype}.")
    try:
        jnp.broadcast_shapes(mask.shape, x_known.shape)
    except ValueError as err:
        raise ValueError(
            f"`mask` of shape {mask.shape} does not broadcast against `x_known` {x_known.shape}."
        ) from err

    def project(key, x, t):
        t = jnp.broadcast_to(t, x.shape[:1])
        a, s = process.marginal(t)
        known = expand_to(a, x) * x_known + expand_to(s, x) * jax.random.normal(key, x.shape)
        return jnp.where(mask, known, x)

    return project
