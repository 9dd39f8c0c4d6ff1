"""Exact references: Gaussians and Gaussian mixtures with closed-form noised marginals.

A mixture `p_0(x) = sum_k w_k N(x | m_k, diag(sigma_k^2))` pushed through any Gaussian path
with `x_t = a x_0 + s eps` (`a = alpha(t)`, `s = sigma(t)`) stays a mixture:
`p_t(x) = sum_k w_k N(x | a m_k, diag(a^2 sigma_k^2 + s^2))`. Its log-density, score
`grad_x log p_t`, posterior mean `E[x_0 | x_t]` and component posteriors are exact at every `t`,
and `exact_model` turns them into a `Model` of any prediction kind, so samplers, losses and the
likelihood can be checked without training anything.

Shapes: `x` is `[B, *event]`, `t` a scalar or `[B]`; per-example outputs are `[B]`.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from diffjax._checks import (
    LOG_2PI,
    as_float_array,
    as_real_array,
    check_batch_time,
    check_choice,
    check_key,
    check_positive_int,
    concrete,
    expand_to,
)
from diffjax._typing import Values
from diffjax.model import PREDICTIONS, Model, from_x0_eps, path_coefficients
from diffjax.processes import AbstractMarginal, AbstractProcess

__all__ = ["GaussianMixture", "exact_classifier", "exact_model", "gaussian"]


def _check_process(process) -> AbstractMarginal:
    if not isinstance(process, AbstractMarginal):
        raise TypeError(
            f"`process` must be a diffjax process or schedule, got {type(process).__name__}."
        )
    return process


def _coefficients(process: AbstractMarginal, x: Array, t) -> tuple[Array, Array]:
    """`(alpha(t), sigma(t))` at `t` (scalar or `[B]` for `x: [B, ...]`), each of shape `[B or 1]`."""
    t = as_real_array(t, "t")
    if isinstance(process, AbstractProcess):
        t = t.astype(x.dtype)
    else:
        t = process.check_time(t, traced=False)  # used inside sampler loops: NaN outside 0..T
    check_batch_time(x, t)
    a, s = process.marginal(t)
    return jnp.atleast_1d(a), jnp.atleast_1d(s)


class GaussianMixture(eqx.Module):
    """`p(x) = sum_k w_k N(x | means[k], diag(stds[k]^2))` over events of shape `event_shape`.

    Args:
        weights: `[K]` positive mixture weights summing to 1.
        means: `[K, *event]` component means.
        stds: `[K]` (isotropic components) or `[K, *event]` (diagonal), positive.
    """

    weights: Array
    means: Array
    stds: Array

    def __init__(self, weights: Values, means: Values, stds: Values):
        weights = as_float_array(weights, "weights")
        means = as_float_array(means, "means")
        stds = as_float_array(stds, "stds")
        if weights.ndim != 1 or weights.shape[0] == 0:
            raise ValueError(f"`weights` must have shape [K] with K >= 1, got {weights.shape}.")
        k = weights.shape[0]
        if means.ndim < 2 or means.shape[0] != k:
            raise ValueError(f"`means` must have shape [K={k}, *event], got {means.shape}.")
        if stds.shape == (k,):
            stds = stds.reshape((k,) + (1,) * (means.ndim - 1))
        if stds.shape[0] != k or stds.ndim != means.ndim or not all(
            s in (1, m) for s, m in zip(stds.shape, means.shape, strict=True)
        ):
            raise ValueError(
                f"`stds` must have shape [K={k}] or [K, *event] = {means.shape}, got {stds.shape}."
            )
        self.weights, self.means, self.stds = weights, means, jnp.broadcast_to(stds, means.shape)

    def __check_init__(self):
        w = concrete(self.weights)
        if w is not None and not (np.all(w > 0) and abs(float(w.sum()) - 1.0) <= 1e-5):
            raise ValueError(f"`weights` must be positive and sum to 1, got {self.weights}.")
        m = concrete(self.means)
        if m is not None and not np.all(np.isfinite(m)):
            raise ValueError("`means` must be finite.")
        s = concrete(self.stds)
        if s is not None and not np.all((s > 0) & np.isfinite(s)):
            raise ValueError("`stds` must be positive and finite.")

    @property
    def num_components(self) -> int:
        return self.weights.shape[0]

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.means.shape[1:])

    def _check_x(self, x: ArrayLike) -> Array:
        x = as_float_array(x, "x")
        if x.ndim < 1 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"`x` must have shape [B, *event] with event {self.event_shape}, got {x.shape}."
            )
        return x

    def sample_with_components(self, key, n: int) -> tuple[Array, Array]:
        """`n` draws and the index of the component each came from: `([n, *event], [n])`."""
        key = check_key(key)
        n = check_positive_int(n, "n")
        k_key, e_key = jax.random.split(key)
        comp = jax.random.categorical(k_key, jnp.log(self.weights), shape=(n,))
        noise = jax.random.normal(e_key, (n,) + self.event_shape)
        return self.means[comp] + self.stds[comp] * noise, comp

    def sample(self, key, n: int) -> Array:
        """`n` draws, `[n, *event]`."""
        return self.sample_with_components(key, n)[0]

    def _noised_components(self, x: Array, process, t) -> tuple[Array, Array]:
        """Flattened component means and variances of `p_t`: `[B or 1, K, D]` each."""
        means = self.means.reshape(self.num_components, -1)[None]
        stds = self.stds.reshape(self.num_components, -1)[None]
        if process is None:
            return means, stds**2
        a, s = _coefficients(_check_process(process), x, t)
        a, s = expand_to(a, means), expand_to(s, means)
        return a * means, (a * stds) ** 2 + s**2

    def component_log_probs(self, x: ArrayLike, process=None, t: ArrayLike = 0) -> Array:
        """`log w_k + log N(x | a m_k, a^2 sigma_k^2 + s^2)` for each component: `[B, K]`.

        Without `process`, the clean mixture (`t = 0`).
        """
        return self._joint(self._check_x(x), process, t)[0]

    def _joint(self, x: Array, process, t) -> tuple[Array, Array, Array]:
        """`(log w_k + log N_k(x) [B, K], x - a m_k [B, K, D], variances [B or 1, K, D])`."""
        means, var = self._noised_components(x, process, t)
        diff = x.reshape(x.shape[0], 1, -1) - means
        logn = -0.5 * jnp.sum(diff**2 / var + jnp.log(var) + LOG_2PI, axis=-1)
        return jnp.log(self.weights) + logn, diff, var

    def log_prob(self, x: ArrayLike, process=None, t: ArrayLike = 0) -> Array:
        """`log p_t(x)`: `[B]`. Without `process`, the clean density `log p_0(x)`."""
        return jax.nn.logsumexp(self.component_log_probs(x, process, t), axis=-1)

    def component_log_posterior(self, x: ArrayLike, process=None, t: ArrayLike = 0) -> Array:
        """`log p_t(k | x)` by Bayes' rule over the components: `[B, K]`."""
        logp = self.component_log_probs(x, process, t)
        return logp - jax.nn.logsumexp(logp, axis=-1, keepdims=True)

    def score(self, x: ArrayLike, process=None, t: ArrayLike = 0) -> Array:
        """`grad_x log p_t(x) = sum_k p_t(k | x) (a m_k - x) / (a^2 sigma_k^2 + s^2)`: `[B, *event]`.

        Computed on flattened events (one `[B, K, D]` contraction, whatever the event rank).
        """
        x = self._check_x(x)
        log_joint, diff, var = self._joint(x, process, t)
        resp = jax.nn.softmax(log_joint, axis=-1)  # p_t(k | x): [B, K]
        return jnp.einsum("bk,bkd->bd", resp, -diff / var).reshape(x.shape)

    def posterior_mean(self, x: ArrayLike, process, t: ArrayLike) -> Array:
        """Tweedie's denoiser `E[x_0 | x_t] = sum_k p_t(k | x) (m_k + a v_k (x - a m_k) / (a^2 v_k + s^2))`.

        `v_k = sigma_k^2`; finite where `alpha = 0` (it is then the prior mean): `[B, *event]`.
        """
        x = self._check_x(x)
        log_joint, diff, var = self._joint(x, process, t)
        resp = jax.nn.softmax(log_joint, axis=-1)
        a, _ = _coefficients(process, x, t)
        a = a.reshape(-1, 1, 1)
        means = self.means.reshape(self.num_components, -1)[None]
        v = self.stds.reshape(self.num_components, -1)[None] ** 2
        post = means + a * v * diff / var  # var = a^2 v + s^2
        return jnp.einsum("bk,bkd->bd", resp, post).reshape(x.shape)

    def subset(self, components: Values) -> GaussianMixture:
        """The mixture restricted to the given component indices, weights renormalised.

        With components grouped into classes, `subset(components of class y)` is `p_0(x | y)`.
        """
        idx = as_real_array(components, "components", np)
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"`components` must be integer indices, got dtype {idx.dtype}.")
        if idx.ndim != 1 or idx.size == 0:
            raise ValueError(f"`components` must be a non-empty 1-D integer array, got {idx}.")
        if idx.min() < 0 or idx.max() >= self.num_components:
            raise ValueError(f"`components` must lie in 0..{self.num_components - 1}, got {idx}.")
        w = self.weights[idx]
        return GaussianMixture(w / jnp.sum(w), self.means[idx], self.stds[idx])

    def noised(self, process, t: ArrayLike) -> GaussianMixture:
        """The mixture `p_t` at a single time `t` (a scalar) as a `GaussianMixture`."""
        t = as_real_array(t, "t")
        _check_process(process)
        if t.ndim != 0:
            raise ValueError(f"`t` must be a scalar, got shape {t.shape}.")
        a, s = process.marginal(t)
        return GaussianMixture(self.weights, a * self.means, jnp.sqrt((a * self.stds) ** 2 + s**2))


def gaussian(mean: ArrayLike, std: ArrayLike) -> GaussianMixture:
    """`N(mean, diag(std^2))` as a one-component mixture; `std` a scalar or of `mean`'s shape."""
    mean = as_float_array(mean, "mean")
    std = as_float_array(std, "std")
    if std.ndim != 0 and std.shape != mean.shape:
        raise ValueError(f"`std` must be a scalar or have the shape of `mean` {mean.shape}.")
    return GaussianMixture(jnp.ones((1,)), mean[None], jnp.broadcast_to(std, mean.shape)[None])


def _check_dist(dist) -> GaussianMixture:
    if not isinstance(dist, GaussianMixture):
        raise TypeError(f"`dist` must be a GaussianMixture, got {type(dist).__name__}.")
    return dist


def exact_model(dist: GaussianMixture, process, prediction: str = "score") -> Model:
    """The exact model of the noised data distribution on `process`, predicting `prediction`.

    Every kind is computed from the exact score `s` and the exact posterior mean `x0`
    (`eps = -sigma s`), so it stays finite at both ends of paths where `alpha` or `sigma` is 0.
    """
    _check_dist(dist)
    _check_process(process)
    check_choice(prediction, "prediction", PREDICTIONS)
    return Model(_ExactPrediction(dist, process, prediction), process, prediction)


class _ExactPrediction(eqx.Module):
    dist: GaussianMixture
    process: AbstractMarginal
    prediction: str = eqx.field(static=True)

    def __call__(self, x, t):
        score = self.dist.score(x, self.process, t)
        if self.prediction == "score":
            return score
        a, s, da, ds = path_coefficients(self.process, x, t)
        x0 = self.dist.posterior_mean(x, self.process, t)
        return from_x0_eps(self.prediction, x0, -s * score, a, s, da, ds)


def exact_classifier(dist: GaussianMixture, process, classes: Values) -> Callable:
    """The exact noise-conditional classifier `log p_t(y | x)` of a labelled mixture.

    Component `k` carries label `classes[k]`; by Bayes' rule
    `p_t(y | x) = sum_{k: classes[k] = y} p_t(k | x)`. Returns `fn(x, t) -> [B, C]` log-probabilities
    with `C = max(classes) + 1`.
    """
    _check_dist(dist)
    _check_process(process)
    classes = as_real_array(classes, "classes", np)
    if not np.issubdtype(classes.dtype, np.integer):
        raise TypeError(f"`classes` must be integer labels, got dtype {classes.dtype}.")
    if classes.shape != (dist.num_components,) or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(
            f"`classes` must be an integer array of shape [K] = [{dist.num_components}], got {classes}."
        )
    if classes.min() < 0:
        raise ValueError("`classes` must be non-negative.")
    onehot = jnp.asarray(classes[None, :] == np.arange(classes.max() + 1)[:, None])  # [C, K]
    return _ExactClassifier(dist, process, onehot)


class _ExactClassifier(eqx.Module):
    dist: GaussianMixture
    process: AbstractMarginal
    onehot: Array  # [C, K], component k has class c

    def __call__(self, x, t):
        log_post = self.dist.component_log_posterior(x, self.process, t)  # [B, K]
        masked = jnp.where(self.onehot[None], log_post[:, None, :], -jnp.inf)  # [B, C, K]
        return jax.nn.logsumexp(masked, axis=-1)
