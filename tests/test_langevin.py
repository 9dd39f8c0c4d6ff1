"""Langevin dynamics against exact references: Gaussian stationary laws and a Gaussian mixture."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import langevin
from diffjax.metrics import energy_distance

N = 4000
TOL = 0.003  # energy-distance threshold, about twice its 4000-sample noise level in 2-D


@pytest.fixture(scope="module")
def gmm():
    angles = 2 * np.pi * np.arange(8) / 8
    means = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return dj.GaussianMixture(np.full(8, 1 / 8), means, np.full(8, 0.1))


def test_ula_discrete_stationary_variance():
    """On `N(0, v I)`, ULA is `x' = (1 - h/(2v)) x + sqrt(h) z`: stationary variance
    `h / (1 - (1 - h/(2v))^2)`, 5.3% above `v` at `h = 0.2 v` (the notes' `1/2` in the drift)."""
    v, h = 1.0, 0.2
    x0 = jnp.sqrt(v) * jax.random.normal(jax.random.key(0), (20_000, 2))
    x, info = langevin.ula(jax.random.key(1), lambda x: -x / v, x0, step_size=h, num_steps=100)
    rho = 1.0 - h / (2 * v)
    exact = h / (1.0 - rho**2)
    var = float(jnp.var(x))
    # 40000 values: the variance estimate has a relative std of sqrt(2 / 40000) = 0.7%.
    assert abs(var / exact - 1.0) < 0.03
    assert abs(var / v - 1.0) > 0.025  # the O(h) bias is the predicted one, not zero
    assert info["nfe"] == 100


def test_ula_keeps_mixture_stationary(gmm):
    x0 = gmm.sample(jax.random.key(1), N)
    x, _ = langevin.ula(
        jax.random.key(2), lambda x: gmm.score(x), x0, step_size=5e-4, num_steps=400
    )
    # Ten relaxation times of a component (rate 1 / (2 * 0.1^2), total time 0.2): the points moved.
    assert float(jnp.mean(jnp.linalg.norm(x - x0, axis=-1))) > 0.1
    assert float(energy_distance(x, gmm.sample(jax.random.key(3), N))) < TOL


@pytest.mark.optimized  # 10 levels x 100 Langevin steps: run-time bound
def test_annealed_reaches_mixture_from_noise(gmm):
    """Song & Ermon's schedule with the exact noise-conditional score `grad log (p * N(0, sigma^2))`.

    The conditional score is the mixture's VESDE score at the time whose std equals sigma.
    """
    ve = dj.VESDE(sigma_min=0.01, sigma_max=50.0)
    score_t = dj.exact_model(gmm, ve, "score")

    def score(x, sigma):
        sigma_t = jnp.sqrt(sigma**2 + ve.sigma_min**2)  # std(t)^2 = sigma(t)^2 - sigma_min^2
        t = ve.T * jnp.log(sigma_t / ve.sigma_min) / jnp.log(ve.sigma_max / ve.sigma_min)
        return score_t(x, t)

    sigmas = np.geomspace(3.0, 0.01, 10)
    x, info = langevin.annealed(
        jax.random.key(0), score, sigmas, (N, 2), steps_per_level=100, step_size=2e-5
    )
    assert float(energy_distance(x, gmm.sample(jax.random.key(1), N))) < TOL
    assert info["nfe"] == 10 * 100 + 1
    # Starting from a given `init` works and is deterministic given the key.
    init = 3.0 * jax.random.normal(jax.random.key(5), (N, 2))
    a, _ = langevin.annealed(jax.random.key(0), score, sigmas, (N, 2), init=init)
    b, _ = langevin.annealed(jax.random.key(0), score, sigmas, (N, 2), init=init)
    np.testing.assert_array_equal(a, b)


def test_langevin_corrector_keeps_gaussian_stationary():
    """In 16-D the SNR rule gives `eps ~ 2 snr^2 v`; the step leaves `N(0, v I)` nearly invariant
    (variance bias about `snr^2`, 2.6% at snr = 0.16), while a step with `sqrt(eps)` noise
    would halve the variance. (Per-example norms inflate it by 29%: see `langevin_corrector`.)"""
    v = 0.5
    x0 = jnp.sqrt(v) * jax.random.normal(jax.random.key(0), (4000, 16))
    score = lambda x, t: -x / v

    def body(x, k):
        return langevin.langevin_corrector(k, score, x, 0.5, snr=0.16), None

    x, _ = jax.lax.scan(body, x0, jax.random.split(jax.random.key(1), 50))
    assert abs(float(jnp.var(x)) / v - 1.0) < 0.06
    assert float(jnp.mean(jnp.abs(x - x0))) > 0.1


def test_langevin_step_vmaps_over_keys(gmm):
    x0 = gmm.sample(jax.random.key(1), 64)
    run = lambda k: langevin.ula(k, lambda x: gmm.score(x), x0, step_size=1e-3, num_steps=5)[0]
    keys = jax.random.split(jax.random.key(0), 2)
    batched = jax.vmap(run)(keys)
    np.testing.assert_allclose(batched[1], run(keys[1]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])


def _score(x):
    return -x


BAD = [
    (
        lambda: langevin.ula(
            jax.random.key(0), _score, jnp.zeros((4, 2)), step_size=-1.0, num_steps=5
        ),
        ValueError,
        "step_size",
    ),
    (
        lambda: langevin.ula(
            jax.random.key(0), _score, jnp.zeros((4, 2)), step_size=0.1, num_steps=0
        ),
        ValueError,
        "num_steps",
    ),
    (
        lambda: langevin.ula(
            jax.random.key(0), lambda x: x[:, :1], jnp.zeros((4, 2)), step_size=0.1, num_steps=5
        ),
        ValueError,
        "score_fn",
    ),
    (
        lambda: langevin.ula(
            jax.random.key(0), _score, jnp.zeros((2,)), step_size=0.1, num_steps=5
        ),
        ValueError,
        "x_init",
    ),
    (
        lambda: langevin.ula("key", _score, jnp.zeros((4, 2)), step_size=0.1, num_steps=5),
        TypeError,
        "key",
    ),
    (
        lambda: langevin.annealed(jax.random.key(0), lambda x, s: x, [0.1, 1.0], (4, 2)),
        ValueError,
        "sigmas",
    ),
    (
        lambda: langevin.annealed(jax.random.key(0), lambda x, s: x, [1.0, -0.1], (4, 2)),
        ValueError,
        "sigmas",
    ),
    (
        lambda: langevin.annealed(jax.random.key(0), lambda x, s: x, [1.0, 0.1], (4,)),
        ValueError,
        "shape",
    ),
    (
        lambda: langevin.annealed(
            jax.random.key(0), lambda x, s: x, [1.0, 0.1], (4, 2), steps_per_level=0
        ),
        ValueError,
        "steps_per_level",
    ),
    (
        lambda: langevin.annealed(
            jax.random.key(0), lambda x, s: x, [1.0, 0.1], (4, 2), init=jnp.zeros((3, 2))
        ),
        ValueError,
        "init",
    ),
    (
        lambda: langevin.annealed(jax.random.key(0), lambda x: x, [1.0, 0.1], (4, 2)),
        ValueError,
        "score_fn",
    ),
    (
        lambda: langevin.langevin_corrector(
            jax.random.key(0), lambda x, t: x, jnp.ones((4, 2)), 0.5, snr=0.1, norm="max"
        ),
        ValueError,
        "norm",
    ),
]


@pytest.mark.parametrize("call, error, match", BAD)
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
