"""Sample metrics against closed forms for Gaussians."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import metrics


def _expected_abs(mu, s):
    """E|Z| for Z ~ N(mu, s^2)."""
    return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2)) + mu * math.erf(
        mu / (s * math.sqrt(2))
    )


def test_energy_distance_closed_form_1d():
    """N(0,1) vs N(mu,1): 2 E|X-Y| - E|X-X'| - E|Y-Y'| with X - Y ~ N(-mu, 2), X - X' ~ N(0, 2).

    4000 vs 4000 samples: the estimator's standard deviation is about 2e-3 here; tolerance 1e-2.
    """
    k1, k2 = jax.random.split(jax.random.key(0))
    mu = 0.5
    x = jax.random.normal(k1, (4000, 1))
    y = mu + jax.random.normal(k2, (4000, 1))
    exact = 2 * _expected_abs(mu, math.sqrt(2)) - 2 * _expected_abs(0.0, math.sqrt(2))
    assert float(metrics.energy_distance(x, y)) == pytest.approx(exact, abs=1e-2)


def test_energy_distance_unbiased_at_zero():
    """Mean over 20 independent pairs from the same law is within 4 standard errors of 0."""
    keys = jax.random.split(jax.random.key(1), 20)
    vals = np.array(
        [float(metrics.energy_distance(*jax.random.normal(k, (2, 1000, 2)))) for k in keys]
    )
    assert abs(vals.mean()) < 4 * vals.std(ddof=1) / np.sqrt(len(vals))


def test_mmd_and_sliced_wasserstein():
    k1, k2, k3 = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(k1, (2000, 3))
    y = jax.random.normal(k2, (2000, 3))
    assert abs(float(metrics.mmd(x, y))) < 5e-3
    assert float(metrics.mmd(x, y + 1.0)) > 0.05
    # 1-D: sliced W2 between N(0,1) and N(mu,1) is |mu| times E|<u, e>|^2 ^ 1/2 = |mu| / sqrt(d)
    sw = float(metrics.sliced_wasserstein(k3, x, y + jnp.array([1.0, 0.0, 0.0]), 512))
    assert sw == pytest.approx(1 / math.sqrt(3), abs=0.06)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: metrics.energy_distance(jnp.ones((3, 2)), jnp.ones((3, 3))), "event"),
        (lambda: metrics.energy_distance(jnp.ones((1, 2)), jnp.ones((3, 2))), "two samples"),
        (lambda: metrics.mmd(jnp.ones((3, 2)), jnp.ones((3, 2)), bandwidth=0.0), "bandwidth"),
        (
            lambda: metrics.sliced_wasserstein(
                jax.random.key(0), jnp.ones((3, 2)), jnp.ones((4, 2))
            ),
            "equal sizes",
        ),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
