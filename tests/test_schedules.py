"""Discrete schedules: published definitions, invariants, the DDPM posterior against Bayes' rule."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import diffjax as dj
from diffjax import schedules


def test_constant_alpha_bar_is_power():
    sch = schedules.constant(num_steps=500, beta=0.01)
    t = jnp.arange(501)
    np.testing.assert_allclose(sch.alpha_bar(t), 0.99 ** np.arange(501), rtol=2e-5)
    assert float(sch.alpha_bar(0)) == 1.0


def test_linear_matches_ho_et_al():
    sch = schedules.linear(1000, 1e-4, 0.02)
    betas = np.linspace(1e-4, 0.02, 1000)
    np.testing.assert_allclose(sch.betas, betas, rtol=1e-6)
    np.testing.assert_allclose(sch.alpha_bars[1:], np.cumprod(1 - betas), rtol=1e-5)
    # The value usually quoted for Ho et al.'s schedule: alpha_bar(T) ~ 4.04e-5.
    assert float(sch.alpha_bar(1000)) == pytest.approx(4.036e-5, rel=1e-3)


def test_cosine_matches_nichol_dhariwal():
    T, s = 1000, 0.008
    sch = schedules.cosine(T, s=s)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    for t in (1, 10, 250, 500, 900, 990):
        assert float(sch.alpha_bar(t)) == pytest.approx(f(t) / f(0), rel=1e-4)
    # f(T) = 0 would give beta_T = 1: the published schedule clips it at 0.999.
    assert float(sch.betas[-1]) == pytest.approx(0.999, rel=1e-6)
    assert float(jnp.max(sch.betas)) <= 0.999 + 1e-7


# A few lengths (each new length compiles every op again), any beta values.
@settings(max_examples=25, deadline=None)
@given(
    num_steps=st.sampled_from([1, 2, 3, 17, 400]),
    lo=st.floats(1e-5, 0.5),
    spread=st.floats(0.0, 0.49),
    kind=st.sampled_from(["constant", "linear", "cosine"]),
)
def test_schedule_invariants(num_steps, lo, spread, kind):
    if kind == "constant":
        sch = schedules.constant(num_steps, lo)
    elif kind == "linear":
        sch = schedules.linear(num_steps, lo, lo + spread)
    else:
        sch = schedules.cosine(num_steps)
    # alpha_bar(T) must be representable in float32 (about e^-87) for "in (0, 1]" to hold.
    assume(float(-jnp.sum(jnp.log1p(-sch.betas))) < 80.0)
    ab = np.asarray(sch.alpha_bars, np.float64)
    assert ab[0] == 1.0 and ab.shape == (num_steps + 1,)
    assert np.all(ab > 0) and np.all(ab <= 1)
    assert np.all(np.diff(ab) < 0)  # strictly decreasing: every beta > 0
    betas = np.asarray(sch.betas, np.float64)
    assert np.all((betas > 0) & (betas < 1))
    # beta~_t <= beta_t, with equality only at t = 1 (beta~_1 = 0).
    pv = np.asarray(sch.posterior_variance[1:], np.float64)
    assert pv[0] == pytest.approx(0.0, abs=1e-12)
    assert np.all(pv <= betas * (1 + 1e-5))
    # marginal is (sqrt(alpha_bar), sqrt(1 - alpha_bar))
    a, s = sch.marginal(jnp.arange(num_steps + 1))
    np.testing.assert_allclose(np.asarray(a) ** 2 + np.asarray(s) ** 2, 1.0, rtol=1e-5)


def _bayes_posterior(beta_t, ab_prev, x0, x_t):
    """q(x_{t-1} | x_t, x_0) as the normalised product of two Gaussians in x_{t-1} (float64).

    q(x_t | x_{t-1}) = N(x_t | sqrt(1 - beta_t) x_{t-1}, beta_t) seen as a function of x_{t-1},
    times q(x_{t-1} | x_0) = N(sqrt(ab_prev) x_0, 1 - ab_prev).
    """
    prec = (1 - beta_t) / beta_t + (1 / (1 - ab_prev) if ab_prev < 1 else np.inf)
    if np.isinf(prec):  # t = 1: x_0 is known exactly
        return x0, 0.0
    var = 1.0 / prec
    mean = var * (np.sqrt(1 - beta_t) * x_t / beta_t + np.sqrt(ab_prev) * x0 / (1 - ab_prev))
    return mean, var


@pytest.mark.parametrize("make", [lambda: schedules.linear(1000), lambda: schedules.cosine(200)])
def test_posterior_is_bayes_rule(make):
    sch = make()
    T = sch.num_steps
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(4, 3))
    x_t = rng.normal(size=(4, 3))
    ts = np.array([1, 2, T // 2, T])
    mean, var = dj.q_posterior(sch, x0, x_t, jnp.asarray(ts))
    betas = np.asarray(sch.betas, np.float64)
    ab = np.concatenate([[1.0], np.cumprod(1 - betas)])
    for i, t in enumerate(ts):
        m_ref, v_ref = _bayes_posterior(betas[t - 1], ab[t - 1], x0[i], x_t[i])
        np.testing.assert_allclose(mean[i], m_ref, rtol=2e-4, atol=2e-5)
        assert float(var[i]) == pytest.approx(v_ref, rel=2e-4, abs=1e-9)


def test_posterior_kl_is_const_times_squared_error():
    """KL(q(x_{t-1}|x_t,x_0) || q(x_{t-1}|x_t,x_hat)) = Const ||x_0 - x_hat||^2 (notes, topic 2).

    Both Gaussians share the variance beta~_t, so the KL is ||mu - mu_hat||^2 / (2 beta~_t), and
    mu is affine in x_0 with coefficient c_t = sqrt(alpha_bar(t-1)) beta_t / (1 - alpha_bar(t)):
    Const = c_t^2 / (2 beta~_t).
    """
    sch = schedules.linear(1000)
    rng = np.random.default_rng(1)
    x0, x_hat, x_t = (jnp.asarray(rng.normal(size=(3, 5))) for _ in range(3))
    t = jnp.array([2, 500, 1000])
    mu, var = dj.q_posterior(sch, x0, x_t, t)
    mu_hat, var_hat = dj.q_posterior(sch, x_hat, x_t, t)
    np.testing.assert_array_equal(var, var_hat)
    d = x0.shape[1]
    # General Gaussian KL with equal isotropic covariances var I.
    kl = 0.5 * (
        d * var / var_hat
        + jnp.sum((mu - mu_hat) ** 2, 1) / var_hat
        - d
        + d * jnp.log(var_hat / var)
    )
    ab = np.concatenate([[1.0], np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))])
    tt = np.asarray(t)
    beta = np.linspace(1e-4, 0.02, 1000)[tt - 1]
    c = np.sqrt(ab[tt - 1]) * beta / (1 - ab[tt])
    btilde = (1 - ab[tt - 1]) / (1 - ab[tt]) * beta
    const = c**2 / (2 * btilde)
    np.testing.assert_allclose(
        kl, const * np.sum((np.asarray(x0) - np.asarray(x_hat)) ** 2, 1), rtol=2e-4, atol=5e-7
    )  # atol: at t = T the KL is ~2e-6 and the float32 means cancel to ~1e-7


def test_posterior_jit_and_vmap():
    sch = schedules.cosine(100)
    x0 = jnp.ones((6, 2))
    x_t = jnp.linspace(-1, 1, 12).reshape(6, 2)
    t = jnp.arange(1, 7) * 10
    eager = dj.q_posterior(sch, x0, x_t, t)
    jitted = jax.jit(dj.q_posterior)(sch, x0, x_t, t)
    mapped = jax.vmap(lambda a, b, c: dj.q_posterior(sch, a[None], b[None], c[None]))(x0, x_t, t)
    for e, j, m in zip(eager, jitted, mapped, strict=True):
        np.testing.assert_allclose(e, j, rtol=1e-6)
        np.testing.assert_allclose(e, m.reshape(e.shape), rtol=1e-6)


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: schedules.constant(0, 0.1), ValueError, "num_steps"),
        (lambda: schedules.constant(10.5, 0.1), TypeError, "num_steps"),
        (lambda: schedules.constant(10, 0.0), ValueError, "beta"),
        (lambda: schedules.constant(10, 1.0), ValueError, "beta"),
        (lambda: schedules.linear(10, -1e-4, 0.02), ValueError, "beta_start"),
        (lambda: schedules.linear(10, 0.02, 1e-4), ValueError, "beta_start"),
        (lambda: schedules.linear(10, 1e-4, 1.5), ValueError, "beta_end"),
        (lambda: schedules.cosine(10, s=-0.1), ValueError, r"[`']s[`']"),
        (lambda: schedules.from_betas([0.1, 0.0]), ValueError, "betas"),
        (lambda: schedules.from_betas([[0.1]]), ValueError, "betas"),
        (lambda: schedules.linear(10).alpha_bar(11), ValueError, r"[`']t[`']"),
        (lambda: schedules.linear(10).alpha_bar(-1), ValueError, r"[`']t[`']"),
        (lambda: schedules.linear(10).alpha_bar(0.5), TypeError, r"[`']t[`']"),
        (
            lambda: dj.q_posterior(schedules.linear(10), jnp.ones((2, 3)), jnp.ones((2, 3)), 0),
            ValueError,
            "1..T",
        ),
        (
            lambda: dj.q_posterior(schedules.linear(10), jnp.ones((2, 3)), jnp.ones((2, 4)), 1),
            ValueError,
            "x_t",
        ),
        (
            lambda: dj.q_posterior(
                schedules.linear(10), jnp.ones((2, 3)), jnp.ones((2, 3)), jnp.array([1, 2, 3])
            ),
            ValueError,
            r"[`']t[`']",
        ),
        (
            lambda: dj.q_posterior(dj.VPSDE(), jnp.ones((2, 3)), jnp.ones((2, 3)), 1),
            TypeError,
            "schedule",
        ),
    ],
)
def test_validation_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_traced_out_of_range_steps_give_nan_not_a_clamped_entry():
    """Inside `jit` (sampler loops skip the run-time check) a step outside `0..T` looks up NaN:
    before, `alpha_bars[T + 1]` silently returned `alpha_bar(T)` and `[-1]` wrapped to it."""
    sched = schedules.linear(10)
    lookup = jax.jit(lambda t: (sched.alpha_bar(t), sched.beta(t)))
    ab, beta = lookup(jnp.array([-1, 0, 10, 11]))
    np.testing.assert_array_equal(np.isnan(ab), [True, False, False, True])
    np.testing.assert_array_equal(np.isnan(beta), [True, False, False, True])
    np.testing.assert_allclose(ab[1:3], [1.0, np.prod(1.0 - np.asarray(sched.betas))], rtol=1e-5)
    np.testing.assert_allclose(beta[1:3], [0.0, sched.betas[-1]])
    model = dj.Model(lambda x, t: jnp.zeros_like(x), sched, "eps")
    x0 = jax.jit(lambda x, t: model.x0(x, t))(jnp.ones((2, 3)), jnp.array([5, 11]))
    assert np.all(np.isfinite(x0[0])) and np.all(np.isnan(x0[1]))
