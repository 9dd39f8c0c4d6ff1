"""Forward SDEs: marginals against Euler–Maruyama simulation, the DDPM limit, drifts, validation."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import lineax
import numpy as np
import pytest

import diffjax as dj
from diffjax import schedules

SDES = {
    "vp": dj.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": dj.SubVPSDE(beta_min=0.1, beta_max=20.0),
    "ve": dj.VESDE(sigma_min=0.01, sigma_max=5.0),
}
SAVE_TIMES = jnp.array([0.1, 0.3, 0.6, 1.0])


def _euler_maruyama(sde, key, x0, num_steps=400):
    """Simulate the forward SDE for every row of `x0: [N, 1]` with diffrax, saving at SAVE_TIMES."""
    drift = diffrax.ODETerm(lambda t, y, args: sde.drift(y, t))
    noise = diffrax.ControlTerm(
        lambda t, y, args: lineax.DiagonalLinearOperator(sde.diffusion(t) * jnp.ones_like(y)),
        diffrax.UnsafeBrownianPath(shape=x0.shape, key=key),
    )
    sol = diffrax.diffeqsolve(
        diffrax.MultiTerm(drift, noise),
        diffrax.Euler(),
        t0=0.0,
        t1=sde.T,
        dt0=sde.T / num_steps,
        y0=x0,
        saveat=diffrax.SaveAt(ts=SAVE_TIMES),
        max_steps=num_steps + 1,
        adjoint=diffrax.ForwardMode(),
    )
    return sol.ys[..., 0]  # [len(SAVE_TIMES), N]


@pytest.mark.parametrize("name", list(SDES))
def test_marginal_matches_euler_maruyama(name):
    """Mean and variance of simulated x_t equal mean_coeff(t) x_0 and std(t)^2.

    N = 20000 paths from x_0 = 1.5; the standard error of the mean is std/sqrt(N) and of the
    variance std^2 sqrt(2/N); we allow 5 standard errors plus the Euler bias (dt = 1/400, a
    relative error of order beta_max dt / 4 ~ 1e-2 in the variance for VP).
    """
    sde = SDES[name]
    n = 20_000
    x0 = jnp.full((n, 1), 1.5)
    ys = _euler_maruyama(sde, jax.random.key(0), x0)
    mean_coeff, std = sde.marginal(SAVE_TIMES)
    for i in range(len(SAVE_TIMES)):
        m, v = float(jnp.mean(ys[i])), float(jnp.var(ys[i]))
        s = float(std[i])
        assert m == pytest.approx(1.5 * float(mean_coeff[i]), abs=5 * s / np.sqrt(n) + 0.01 * 1.5)
        assert v == pytest.approx(s**2, rel=5 * np.sqrt(2 / n) + 0.015)


@pytest.mark.parametrize(
    "process", [schedules.constant(1000, 0.01), dj.VPSDE()], ids=["ddpm", "vp"]
)
def test_unit_variance_data_stays_unit_variance(process):
    """Notes, topic 2: D x_0 = 1 implies D x_t = 1 under the VP process.

    Data: uniform on [-sqrt(3), sqrt(3)] (variance 1, far from Gaussian); N = 200000 draws per t,
    so the variance's standard error is about sqrt(2/N) ~ 3.2e-3 (a little more for non-Gaussian
    data); tolerance 0.02.
    """
    n = 200_000
    k1, k2 = jax.random.split(jax.random.key(1))
    x0 = jax.random.uniform(k1, (n, 1), minval=-np.sqrt(3), maxval=np.sqrt(3))
    noise = jax.random.normal(k2, (n, 1))
    times = (
        [1, 50, 300, 1000] if isinstance(process, dj.DiscreteSchedule) else [0.01, 0.2, 0.5, 1.0]
    )
    for t in times:
        x_t = dj.q_sample(process, x0, jnp.asarray(t), noise)
        assert float(jnp.var(x_t)) == pytest.approx(1.0, abs=0.02)


def test_ddpm_chain_converges_to_vp_marginal():
    """The notes' link beta = beta_hat dt: alpha_bar(N t) of the N-step chain -> mean_coeff(t)^2.

    log(1 - beta) = -beta - beta^2/2 - ..., so the chain's log alpha_bar(T) is off by about
    sum_i beta_i^2 / 2 ~ beta_max^2 / (6 N): first-order convergence (0.067 at N = 1000).
    """
    sde = dj.VPSDE(beta_min=0.1, beta_max=20.0)
    errors, ns = [], (50, 200, 1000)
    for n in ns:
        sch = sde.to_ddpm(n)
        steps = jnp.array([n // 10, n // 2, n])
        ab = sch.alpha_bar(steps)
        exact = sde.marginal(steps / n)[0] ** 2
        errors.append(float(jnp.max(jnp.abs(jnp.log(ab) - jnp.log(exact)))))
    assert errors[0] > errors[1] > errors[2]
    scaled = np.array(errors) * np.array(ns)  # ~ constant for first-order convergence
    assert scaled.max() / scaled.min() < 1.5
    assert errors[2] == pytest.approx(20.0**2 / (6 * 1000), rel=0.1)
    # from_ddpm is the inverse map
    back = dj.VPSDE.from_ddpm(1000, 1e-4, 0.02)
    assert float(back.beta_min) == pytest.approx(0.1) and float(back.beta_max) == pytest.approx(
        20.0
    )


@pytest.mark.parametrize("name", list(SDES))
def test_marginal_consistent_with_drift_and_diffusion(name):
    """d/dt mean_coeff = -beta/2 mean_coeff (0 for VE) and d/dt var = 2 f' var + g^2 (linear SDE)."""
    sde = SDES[name]
    t = jnp.array([0.2, 0.5, 0.9])
    mean = lambda s: sde.marginal(s)[0]
    var = lambda s: sde.marginal(s)[1] ** 2
    slope = jax.vmap(lambda s: sde.drift(jnp.ones((1, 1)), s)[0, 0])(t)  # f(x, t) = slope(t) x
    dmean = jax.vmap(jax.grad(mean))(t)
    dvar = jax.vmap(jax.grad(var))(t)
    np.testing.assert_allclose(dmean, slope * mean(t), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dvar, 2 * slope * var(t) + sde.diffusion(t) ** 2, rtol=1e-3)


def test_reverse_and_probability_flow_drifts(eight_gaussians):
    sde = SDES["vp"]
    score = dj.exact_score(eight_gaussians, sde)
    x = eight_gaussians.sample(jax.random.key(0), 5)
    t = jnp.full((5,), 0.4)
    g2 = sde.diffusion(t)[:, None] ** 2
    f = sde.drift(x, t)
    np.testing.assert_allclose(sde.reverse_drift(score, x, t), f - g2 * score(x, t), rtol=1e-6)
    np.testing.assert_allclose(
        sde.probability_flow_drift(score, x, t), f - 0.5 * g2 * score(x, t), rtol=1e-6
    )


def test_log_snr_inverse_and_priors():
    sde = SDES["vp"]
    t = jnp.linspace(0.01, 1.0, 7)
    np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-4)
    z = jnp.array([[0.3, -1.2]])
    ref = -0.5 * jnp.sum(z**2) - jnp.log(2 * jnp.pi)
    assert float(sde.prior_log_prob(z)[0]) == pytest.approx(float(ref), rel=1e-6)
    ve = SDES["ve"]
    assert float(ve.prior_log_prob(z)[0]) == pytest.approx(
        float(-0.5 * jnp.sum(z**2) / 25 - jnp.log(2 * jnp.pi * 25)), rel=1e-6
    )
    sample = ve.prior_sample(jax.random.key(3), (20_000, 1))
    assert float(jnp.std(sample)) == pytest.approx(5.0, rel=0.03)


@pytest.mark.parametrize("name", list(SDES))
def test_marginal_jit_vmap_grad(name):
    sde = SDES[name]
    t = jnp.linspace(0.05, 1.0, 5)
    eager = sde.marginal(t)
    jitted = jax.jit(lambda s, tt: s.marginal(tt))(sde, t)
    mapped = jax.vmap(sde.marginal)(t)
    for e, j, m in zip(eager, jitted, mapped, strict=True):
        np.testing.assert_allclose(e, j, rtol=1e-6)
        np.testing.assert_allclose(e, m, rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(jax.vmap(jax.grad(lambda s: sde.marginal(s)[1]))(t))))
    # A concrete time closed over by a jitted function is range-checked without concretising.
    closed = jax.jit(lambda x: sde.drift(x, t))(jnp.ones((5, 2)))
    np.testing.assert_allclose(closed, sde.drift(jnp.ones((5, 2)), t), rtol=1e-6)
    late = t + 2 * sde.T
    with pytest.raises(ValueError, match=r"\[0, T\]"):
        jax.jit(lambda x: sde.drift(x, late))(jnp.ones((5, 2)))


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: dj.VPSDE(beta_min=30.0, beta_max=20.0), ValueError, "beta_min"),
        (lambda: dj.VPSDE(beta_min=-0.1), ValueError, "beta_min"),
        (lambda: dj.SubVPSDE(beta_max="20"), TypeError, "beta_max"),
        (lambda: dj.VESDE(sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_min"),
        (lambda: dj.VPSDE(T=0.0), ValueError, "`T`"),
        (lambda: dj.VPSDE().marginal(1.5), ValueError, r"\[0, T\]"),
        (lambda: dj.VPSDE().marginal(-0.1), ValueError, r"\[0, T\]"),
        (lambda: dj.VPSDE().marginal(jnp.nan), ValueError, r"\[0, T\]"),
        (lambda: dj.VPSDE().drift(jnp.ones((3, 2)), jnp.ones(4) * 0.5), ValueError, "`t`"),
        (lambda: dj.VPSDE().drift(jnp.ones(()), 0.5), ValueError, "`x`"),
        (lambda: dj.VPSDE().drift(jnp.ones((2, 2), bool), 0.5), TypeError, "`x`"),
        (lambda: dj.VPSDE().prior_sample(0, (2, 2)), TypeError, "key"),
        (
            lambda: dj.VPSDE().prior_sample(jax.random.split(jax.random.key(0)), (2, 2)),
            ValueError,
            "key",
        ),
        (lambda: dj.VPSDE.from_ddpm(0), ValueError, "num_steps"),
        (lambda: dj.VPSDE().to_ddpm(10), ValueError, "num_steps"),
        (
            lambda: dj.q_sample(dj.VPSDE(), jnp.ones((2, 3)), 0.5, jnp.ones((2, 4))),
            ValueError,
            "noise",
        ),
        (lambda: dj.q_sample("vp", jnp.ones((2, 3)), 0.5, jnp.ones((2, 3))), TypeError, "process"),
    ],
)
def test_validation_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
