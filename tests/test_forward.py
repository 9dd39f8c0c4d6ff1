"""Forward process and prediction conversions: exact round trips, jit/vmap, validation."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import forward, schedules

PROCESSES = {
    "linear": (schedules.linear(1000), jnp.array([1, 10, 500, 999])),
    "vp": (dj.VPSDE(), jnp.array([1e-3, 0.1, 0.5, 0.95])),
    "subvp": (dj.SubVPSDE(), jnp.array([1e-2, 0.1, 0.5, 0.95])),
    "ve": (dj.VESDE(), jnp.array([1e-2, 0.1, 0.5, 1.0])),
}


@pytest.mark.parametrize("name", list(PROCESSES))
def test_q_sample_is_the_marginal(name):
    process, t = PROCESSES[name]
    x0 = jnp.arange(8.0).reshape(4, 2)
    noise = jnp.ones((4, 2))
    a, s = process.marginal(t)
    np.testing.assert_allclose(
        dj.q_sample(process, x0, t, noise), a[:, None] * x0 + s[:, None], rtol=1e-6
    )


@pytest.mark.parametrize("name", list(PROCESSES))
def test_prediction_round_trips(name):
    """Every pair eps <-> x0 <-> score <-> v converts back exactly (float32 rounding only)."""
    process, t = PROCESSES[name]
    key = jax.random.key(0)
    x = jax.random.normal(key, (4, 3, 2))
    eps_fn = lambda x, t: jnp.tanh(x) + 0.1  # any function will do
    for src, dst in itertools.permutations(forward.PREDICTIONS, 2):
        src_fn = forward.convert(eps_fn, process, source="eps", target=src)
        there = forward.convert(src_fn, process, source=src, target=dst)
        back = forward.convert(there, process, source=dst, target=src)
        np.testing.assert_allclose(back(x, t), src_fn(x, t), rtol=2e-4, atol=2e-5)
    # The named wrappers agree with the definitions.
    a, s = (c[:, None, None] for c in process.marginal(t))
    eps = eps_fn(x, t)
    np.testing.assert_allclose(forward.score_from_eps(eps_fn, process)(x, t), -eps / s, rtol=1e-5)
    np.testing.assert_allclose(
        forward.x0_from_eps(eps_fn, process)(x, t), (x - s * eps) / a, rtol=1e-4
    )
    x0 = (x - s * eps) / a
    np.testing.assert_allclose(
        forward.v_from_eps(eps_fn, process)(x, t), a * eps - s * x0, rtol=1e-4, atol=1e-5
    )


def test_conversion_recovers_truth_from_q_sample():
    """With x_t = a x0 + s eps built by q_sample, the x0/score/v of the true eps are the truth."""
    process = dj.VPSDE()
    k1, k2 = jax.random.split(jax.random.key(2))
    x0 = jax.random.normal(k1, (6, 2))
    eps = jax.random.normal(k2, (6, 2))
    t = jnp.linspace(0.05, 0.9, 6)
    x_t = dj.q_sample(process, x0, t, eps)
    a, s = (c[:, None] for c in process.marginal(t))
    oracle = lambda x, tt: eps  # the noise that made x_t, as in the notes
    np.testing.assert_allclose(
        forward.x0_from_eps(oracle, process)(x_t, t), x0, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        forward.score_from_eps(oracle, process)(x_t, t),
        -(x_t - a * x0) / s**2,
        rtol=1e-3,
        atol=1e-4,
    )


def test_conversions_pass_extra_arguments_and_jit():
    process = dj.VPSDE()
    labelled = lambda x, t, y: x * y[:, None]
    score = forward.score_from_eps(labelled, process)
    x, t, y = jnp.ones((3, 2)), jnp.full((3,), 0.5), jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(jax.jit(score)(x, t, y), score(x, t, y), rtol=1e-6)
    mapped = jax.vmap(lambda xi, ti, yi: score(xi[None], ti[None], yi[None])[0])(x, t, y)
    np.testing.assert_allclose(mapped, score(x, t, y), rtol=1e-6)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (
            lambda: forward.convert(lambda x, t: x, dj.VPSDE(), source="noise", target="eps"),
            ValueError,
            "source",
        ),
        (
            lambda: forward.convert(lambda x, t: x, dj.VPSDE(), source="eps", target="mu"),
            ValueError,
            "target",
        ),
        (
            lambda: forward.convert(3.0, dj.VPSDE(), source="eps", target="x0"),
            TypeError,
            "model_fn",
        ),
        (lambda: forward.score_from_eps(lambda x, t: x, None), TypeError, "process"),
        (
            lambda: forward.score_from_eps(lambda x, t: x, dj.VPSDE())(jnp.ones((2, 2)), 2.0),
            ValueError,
            r"\[0, T\]",
        ),
        (
            lambda: dj.q_sample(schedules.linear(10), jnp.ones((2, 2)), 0.5, jnp.ones((2, 2))),
            TypeError,
            "`t`",
        ),
    ],
)
def test_validation_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
