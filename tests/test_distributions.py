"""Exact references: mixture scores equal autodiff of log-densities, noised marginals, sampling."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import schedules

PROCESSES = {
    "linear": (schedules.linear(1000), jnp.array([0, 1, 300, 1000])),
    "vp": (dj.VPSDE(), jnp.array([0.0, 0.05, 0.4, 1.0])),
    "ve": (dj.VESDE(sigma_max=10.0), jnp.array([0.0, 0.05, 0.4, 1.0])),
}


@jax.jit
def _autodiff_score(dist, process, x, t):
    logp = lambda xi, ti: dist.log_prob(xi[None], process, ti)[0]
    return jax.vmap(jax.grad(logp))(x, t)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_score_is_grad_log_prob(name, eight_gaussians, image_mixture):
    process, t = PROCESSES[name]
    for dist in (eight_gaussians, image_mixture):
        x = dist.noised(process, t[2]).sample(jax.random.key(0), 4)
        np.testing.assert_allclose(
            dist.score(x, process, t), _autodiff_score(dist, process, x, t), rtol=2e-4, atol=2e-4
        )
        model = dj.exact_model(dist, process, "score")
        np.testing.assert_allclose(
            eqx.filter_jit(lambda m, x: m(x, t))(model, x), dist.score(x, process, t), rtol=1e-5, atol=1e-5
        )


def test_log_prob_matches_closed_form_gaussian():
    mean, std = jnp.array([0.5, -1.0]), jnp.array([0.3, 2.0])
    dist = dj.gaussian(mean, std)
    sde = dj.VPSDE()
    x = jnp.array([[0.1, 0.2], [1.0, -3.0]])
    t = 0.3
    a, s = sde.marginal(t)
    var = a**2 * std**2 + s**2
    ref = -0.5 * jnp.sum((x - a * mean) ** 2 / var + jnp.log(2 * jnp.pi * var), axis=1)
    np.testing.assert_allclose(dist.log_prob(x, sde, t), ref, rtol=1e-6)
    np.testing.assert_allclose(dist.score(x, sde, t), -(x - a * mean) / var, rtol=1e-6)


def test_noised_mixture_matches_q_sample_statistics(eight_gaussians):
    """Pushing exact samples through q_sample gives the moments of `noised` (Monte Carlo, 5 s.e.)."""
    sde = dj.VPSDE()
    n = 100_000
    k1, k2 = jax.random.split(jax.random.key(4))
    x0 = eight_gaussians.sample(k1, n)
    x_t = dj.q_sample(sde, x0, 0.3, jax.random.normal(k2, x0.shape))
    ref = eight_gaussians.noised(sde, 0.3).sample(jax.random.key(5), n)
    se = jnp.std(ref, axis=0) * np.sqrt(2.0 / n)
    np.testing.assert_array_less(jnp.abs(x_t.mean(0) - ref.mean(0)), 5 * se)
    assert float(dj.metrics.energy_distance(x_t[:4000], ref[:4000])) < 0.005


def test_sampling_matches_mixture_parameters(image_mixture):
    """Component frequencies and per-component means of samples (Monte Carlo, 5 s.e.)."""
    n = 60_000
    x, comp = image_mixture.sample_with_components(jax.random.key(7), n)
    freq = jnp.bincount(comp, length=3) / n
    w = image_mixture.weights
    np.testing.assert_array_less(jnp.abs(freq - w), 5 * jnp.sqrt(w * (1 - w) / n))
    for k in range(3):
        xs = x[comp == k]
        err = jnp.abs(xs.mean(0) - image_mixture.means[k])
        np.testing.assert_array_less(err, 5 * image_mixture.stds[k] / np.sqrt(xs.shape[0]))


def test_component_posterior_is_bayes_rule(eight_gaussians):
    sde = dj.VPSDE()
    x = eight_gaussians.sample(jax.random.key(1), 3)
    post = jnp.exp(eight_gaussians.component_log_posterior(x, sde, 0.2))
    joint = jnp.exp(eight_gaussians.component_log_probs(x, sde, 0.2))
    np.testing.assert_allclose(post, joint / joint.sum(1, keepdims=True), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(post.sum(1), 1.0, rtol=1e-6)


def test_exact_eps_is_minus_std_times_score(eight_gaussians):
    sch = schedules.cosine(100)
    x = jax.random.normal(jax.random.key(0), (5, 2))
    t = jnp.array([1, 10, 50, 90, 100])
    eps = dj.exact_model(eight_gaussians, sch, "eps")(x, t)
    std = jnp.sqrt(1 - sch.alpha_bar(t))[:, None]
    np.testing.assert_allclose(eps, -std * eight_gaussians.score(x, sch, t), rtol=1e-6)


@pytest.mark.parametrize("process", [dj.VPSDE(), dj.RectifiedFlow(), dj.EDM(sigma_max=10.0)], ids=str)
def test_posterior_mean_is_tweedie_and_monte_carlo(process, eight_gaussians):
    """`E[x_0 | x_t]` equals Tweedie's `(x + sigma^2 s) / alpha` and a self-normalised
    importance-sampling estimate from prior draws `x_0 ~ p_0` weighted by `q(x_t | x_0)`."""
    t = jnp.full((3,), 0.5 * process.T)
    x = eight_gaussians.noised(process, t[0]).sample(jax.random.key(2), 3)
    a, s = (float(c) for c in process.marginal(t[0]))
    post = eight_gaussians.posterior_mean(x, process, t)
    tweedie = (x + s**2 * eight_gaussians.score(x, process, t)) / a
    np.testing.assert_allclose(post, tweedie, rtol=1e-4, atol=1e-4)
    x0 = eight_gaussians.sample(jax.random.key(3), 400_000)
    logw = -0.5 * jnp.sum((x[:, None, :] - a * x0[None]) ** 2, -1) / s**2  # [3, M]
    w = jax.nn.softmax(logw, axis=1)
    mc = w @ x0
    ess = 1.0 / jnp.sum(w**2, axis=1)
    # Standard error of a self-normalised estimate ~ posterior std / sqrt(ESS); 5 of them.
    assert bool(jnp.all(ess > 1000))
    np.testing.assert_allclose(post, mc, atol=float(5 * 2.0 / jnp.sqrt(ess.min())))
    # Finite where alpha = 0: the posterior mean is then the data mean.
    rf = dj.RectifiedFlow()
    np.testing.assert_allclose(
        eight_gaussians.posterior_mean(x, rf, jnp.ones(3)), jnp.zeros_like(x), atol=1e-5
    )


def test_vmap_over_times(eight_gaussians):
    sde = dj.VPSDE()
    x = jnp.ones((4, 2))
    t = jnp.linspace(0.1, 0.9, 4)
    mapped = jax.vmap(lambda xi, ti: eight_gaussians.score(xi[None], sde, ti)[0])(x, t)
    np.testing.assert_allclose(mapped, eight_gaussians.score(x, sde, t), rtol=1e-5)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: dj.GaussianMixture(jnp.array([0.5, 0.6]), jnp.zeros((2, 2)), jnp.ones(2)),
            ValueError,
            "weights",
        ),
        (
            lambda: dj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.zeros((3, 2)), jnp.ones(2)),
            ValueError,
            "means",
        ),
        (
            lambda: dj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.zeros((2, 2)), jnp.ones(3)),
            ValueError,
            "stds",
        ),
        (
            lambda: dj.GaussianMixture(jnp.array([0.5, 0.5]), jnp.zeros((2, 2)), -jnp.ones(2)),
            ValueError,
            "stds",
        ),
        (
            lambda: dj.GaussianMixture(jnp.ones(1), jnp.zeros((1, 2)), jnp.ones(1)).log_prob(
                jnp.ones((3, 3))
            ),
            ValueError,
            "event",
        ),
        (
            lambda: dj.GaussianMixture(jnp.ones(1), jnp.zeros((1, 2)), jnp.ones(1)).sample(
                jax.random.key(0), 0
            ),
            ValueError,
            r"[`']n[`']",
        ),
        (
            lambda: dj.GaussianMixture(jnp.ones(1), jnp.zeros((1, 2)), jnp.ones(1)).sample(1, 3),
            TypeError,
            "key",
        ),
        (lambda: dj.gaussian(jnp.zeros(2), jnp.ones(3)), ValueError, "std"),
        (lambda: dj.exact_model("gmm", dj.VPSDE()), TypeError, "dist"),
        (lambda: dj.exact_model(dj.gaussian(jnp.zeros(2), 1.0), "vp"), TypeError, "process"),
        (
            lambda: dj.exact_model(dj.gaussian(jnp.zeros(2), 1.0), dj.VPSDE(), "mu"),
            ValueError,
            "prediction",
        ),
    ],
)
def test_validation_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
