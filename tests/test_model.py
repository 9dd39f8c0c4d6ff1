"""`Model`: exact round trips between prediction kinds, log-SNR transfer between processes,
`q_sample`, extra arguments under jit/vmap, and named errors for the wrong kind of model."""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import schedules
from diffjax.model import PREDICTIONS

PROCESSES = {
    "linear": (schedules.linear(1000), jnp.array([1, 10, 500, 999])),
    "vp": (dj.VPSDE(), jnp.array([1e-3, 0.1, 0.5, 0.95])),
    "subvp": (dj.SubVPSDE(), jnp.array([1e-2, 0.1, 0.5, 0.95])),
    "ve": (dj.VESDE(), jnp.array([1e-2, 0.1, 0.5, 1.0])),
    "edm": (dj.EDM(), jnp.array([1e-2, 0.5, 5.0, 80.0])),
    "rf": (dj.RectifiedFlow(), jnp.array([1e-2, 0.3, 0.7, 0.99])),
    "cosine": (dj.Cosine(), jnp.array([1e-2, 0.3, 0.7, 0.99])),
}


def _kinds(process):
    return PREDICTIONS if isinstance(process, dj.AbstractProcess) else PREDICTIONS[:4]


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
    """A model of kind A viewed as B, wrapped as a model of kind B and viewed as A, is the
    original, for every ordered pair of kinds. In float64: some conversions are ill-conditioned
    at low noise (score <-> x0 divides by sigma^2 = 1e-4 at the first DDPM step), so float32
    rounding would be amplified; in float64 they agree to 1e-5 at the ill-conditioned ends (alpha = 0.006, sigma = 0.01)."""
    process, t = PROCESSES[name]
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (4, 3, 2), jnp.float64)
        t = t if t.dtype == jnp.int32 else t.astype(jnp.float64)
        net = lambda x, t: jnp.tanh(x) + 0.1  # any function will do
        for src, dst in itertools.permutations(_kinds(process), 2):
            model = dj.Model(net, process, src)
            there = dj.Model(lambda x, t, m=model, d=dst: m.predict(d, x, t), process, dst)
            back = there.predict(src, x, t)
            assert back.dtype == jnp.float64
            np.testing.assert_allclose(back, net(x, t), rtol=1e-5, atol=1e-9, err_msg=f"{src}->{dst}")


@pytest.mark.parametrize("name", list(PROCESSES))
def test_views_recover_truth_from_q_sample(name):
    """With x_t = a x0 + s eps from `q_sample`, a model predicting the true value of any kind
    gives the true x0 and eps in every other view (the x0/eps pair determines all kinds)."""
    process, t = PROCESSES[name]
    k1, k2 = jax.random.split(jax.random.key(2))
    x0 = jax.random.normal(k1, (4, 2))
    eps = jax.random.normal(k2, (4, 2))
    x_t = dj.q_sample(process, x0, t, eps)
    truth = {"x0": x0, "eps": eps}
    for kind in _kinds(process):
        # The oracle output of kind `kind`, from the pair (x0, eps), computed with the other views.
        oracle = dj.Model(lambda x, tt: eps, process, "eps").predict(kind, x_t, t)
        model = dj.Model(lambda x, tt, o=oracle: o, process, kind)
        for view in ("x0", "eps"):
            np.testing.assert_allclose(
                model.predict(view, x_t, t), truth[view], rtol=2e-3, atol=2e-3, err_msg=f"{kind}->{view}"
            )
    if isinstance(process, dj.AbstractProcess):
        # The velocity of x_t is d/dt (alpha x0 + sigma eps) = alpha' x0 + sigma' eps.
        velocity = jax.jvp(lambda tt: dj.q_sample(process, x0, tt, eps), (t,), (jnp.ones_like(t),))[1]
        model = dj.Model(lambda x, tt: eps, process, "eps")
        np.testing.assert_allclose(model.velocity(x_t, t), velocity, rtol=1e-3, atol=1e-3)


def test_model_on_another_process_matches_the_exact_model(eight_gaussians):
    """Log-SNR matching: the exact VP model moved to EDM, RF or VE is the exact model there."""
    vp = dj.exact_model(eight_gaussians, dj.VPSDE(), "eps")
    for target in (dj.EDM(sigma_min=0.002, sigma_max=50.0), dj.RectifiedFlow(), dj.VESDE()):
        moved = vp.on(target)
        exact = dj.exact_model(eight_gaussians, target, "eps")
        t = jnp.array([0.3, 0.5, 0.8]) * target.T
        x = jnp.stack([eight_gaussians.noised(target, ti).sample(jax.random.key(i), 1)[0] for i, ti in enumerate(t)])
        np.testing.assert_allclose(moved.eps(x, t), exact.eps(x, t), rtol=2e-3, atol=2e-4)
        np.testing.assert_allclose(moved.x0(x, t), exact.x0(x, t), rtol=2e-3, atol=2e-3)


def test_params_time_map_and_extra_arguments_under_jit_and_vmap():
    process = dj.VPSDE()
    apply = lambda p, x, t, y: p * x * y[:, None] + t[:, None]
    model = dj.Model(apply, process, "eps", params=jnp.asarray(2.0), time_map=lambda t: 1000 * t)
    x, t, y = jnp.ones((3, 2)), jnp.full((3,), 0.5), jnp.array([1.0, 2.0, 3.0])
    np.testing.assert_allclose(model(x, t, y), 2 * x * y[:, None] + 500.0)
    score = lambda m, x, t, y: m.score(x, t, y)
    np.testing.assert_allclose(eqx.filter_jit(score)(model, x, t, y), model.score(x, t, y), rtol=1e-6)
    mapped = jax.vmap(lambda xi, ti, yi: model.score(xi[None], ti[None], yi[None])[0])(x, t, y)
    np.testing.assert_allclose(mapped, model.score(x, t, y), rtol=1e-6)
    # Parameters are leaves: new parameters reuse the compiled function.
    traces = []

    @eqx.filter_jit
    def eps(m):
        traces.append(1)
        return m.eps(x, t, y)

    eps(model)
    out = eps(dj.Model(apply, process, "eps", params=jnp.asarray(3.0), time_map=model.time_map))
    assert len(traces) == 1
    np.testing.assert_allclose(out, 3 * x * y[:, None] + 500.0)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: dj.Model(lambda x, t: x, dj.VPSDE(), "noise"), ValueError, "prediction"),
        (lambda: dj.Model(3.0, dj.VPSDE(), "eps"), TypeError, "fn"),
        (lambda: dj.Model(lambda x, t: x, "vp", "eps"), TypeError, "process"),
        (lambda: dj.Model(lambda x, t: x, schedules.linear(10), "velocity"), ValueError, "velocity"),
        (lambda: dj.Model(lambda x, t: x, dj.VPSDE(), "eps", time_map=2.0), TypeError, "time_map"),
        (
            lambda: dj.Model(lambda x, t: x, dj.VPSDE(), "eps").predict("mu", jnp.ones((2, 2)), 0.5),
            ValueError,
            "kind",
        ),
        (
            lambda: dj.Model(lambda x, t: x, schedules.linear(10), "eps").on(dj.VPSDE()),
            TypeError,
            "continuous",
        ),
        (
            lambda: dj.q_sample(schedules.linear(10), jnp.ones((2, 2)), 0.5, jnp.ones((2, 2))),
            TypeError,
            r"[`']t[`']",
        ),
    ],
)
def test_validation_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
