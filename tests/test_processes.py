"""Gaussian paths: marginals against Euler-Maruyama simulation of their own drift and diffusion,
the DDPM limit, log-SNR inverses, the PF-ODE transporting exact marginals, validation."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import lineax
import numpy as np
import pytest

import diffjax as dj
from diffjax import schedules

PROCESSES = {
    "vp": dj.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": dj.SubVPSDE(beta_min=0.1, beta_max=20.0),
    "ve": dj.VESDE(sigma_min=0.01, sigma_max=5.0),
    "edm": dj.EDM(sigma_min=0.002, sigma_max=5.0),
    "rf": dj.RectifiedFlow(),
    "cosine": dj.Cosine(),
}
# Fractions of T at which the simulation is saved; the interpolants' drift is singular at t = 1.
FRACTIONS = {"rf": (0.1, 0.3, 0.6, 0.9), "cosine": (0.1, 0.3, 0.6, 0.9)}


def _save_times(name):
    return jnp.asarray(FRACTIONS.get(name, (0.1, 0.3, 0.6, 1.0))) * PROCESSES[name].T


def _euler_maruyama(process, key, x0, save_times, num_steps=400):
    """Simulate `dx = f dt + g dW` for every row of `x0: [N, 1]`, saving at `save_times`."""
    drift = diffrax.ODETerm(lambda t, y, args: process.drift(y, t))
    noise = diffrax.ControlTerm(
        lambda t, y, args: lineax.DiagonalLinearOperator(process.diffusion(t) * jnp.ones_like(y)),
        diffrax.UnsafeBrownianPath(shape=x0.shape, key=key),
    )
    t1 = float(save_times[-1])
    sol = diffrax.diffeqsolve(
        diffrax.MultiTerm(drift, noise),
        diffrax.Euler(),
        t0=0.0,
        t1=t1,
        dt0=t1 / num_steps,
        y0=x0,
        saveat=diffrax.SaveAt(ts=save_times),
        max_steps=num_steps + 1,
        adjoint=diffrax.ForwardMode(),
    )
    return sol.ys[..., 0]  # [len(save_times), N]


@pytest.mark.parametrize("name", list(PROCESSES))
def test_marginal_matches_euler_maruyama(name):
    """Mean and variance of simulated x_t equal alpha(t) x_0 and sigma(t)^2.

    The drift and diffusion are derived from `marginal` in the base class (or given in closed
    form), so this checks that the SDE they define has the stated marginals. N = 20000 paths
    from x_0 = 1.5; the standard error of the mean is sigma/sqrt(N) and of the variance
    sigma^2 sqrt(2/N); we allow 5 standard errors plus the Euler bias (400 steps, ~1e-2).
    """
    process = PROCESSES[name]
    n = 20_000
    x0 = jnp.full((n, 1), 1.5)
    save_times = _save_times(name)
    ys = _euler_maruyama(process, jax.random.key(0), x0, save_times)
    mean_coeff, std = process.marginal(save_times)
    for i in range(len(save_times)):
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


@pytest.mark.parametrize("name", list(PROCESSES))
def test_marginal_consistent_with_drift_and_diffusion(name):
    """d/dt alpha = f alpha and d/dt sigma^2 = 2 f sigma^2 + g^2 (the moments of a linear SDE)."""
    sde = PROCESSES[name]
    t = jnp.array([0.2, 0.5, 0.9]) * sde.T
    mean = lambda s: sde.marginal(s)[0]
    var = lambda s: sde.marginal(s)[1] ** 2
    slope = jax.vmap(lambda s: sde.drift(jnp.ones((1, 1)), s)[0, 0])(t)  # f(x, t) = slope(t) x
    dmean = jax.vmap(jax.grad(mean))(t)
    dvar = jax.vmap(jax.grad(var))(t)
    np.testing.assert_allclose(dmean, slope * mean(t), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dvar, 2 * slope * var(t) + sde.diffusion(t) ** 2, rtol=1e-3)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_probability_flow_drift_is_the_velocity(name, eight_gaussians):
    """`f - g^2 s / 2` (from the SDE) equals `alpha' E[x_0|x_t] + sigma' E[eps|x_t]` (flow matching),
    and the reverse-SDE drift is the PF-ODE drift minus `g^2 s / 2`."""
    process = PROCESSES[name]
    score = dj.exact_model(eight_gaussians, process, "score")
    velocity = dj.exact_model(eight_gaussians, process, "velocity")
    t = jnp.full((64,), 0.4 * process.T)
    x = eight_gaussians.noised(process, t[0]).sample(jax.random.key(0), 64)
    s = score(x, t)
    pf = process.probability_flow_drift(s, x, t)
    scale = float(jnp.max(jnp.abs(pf)))
    np.testing.assert_allclose(pf, velocity(x, t), rtol=1e-4, atol=1e-5 * scale)
    rev = process.reverse_drift(s, x, t)
    g2 = process.diffusion(t)[:, None] ** 2
    np.testing.assert_allclose(rev, pf - 0.5 * g2 * s, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_log_snr_inverse_and_priors(name):
    """`t_from_log_snr` inverts `log_snr` (closed form and the base class' bisection); priors."""
    sde = PROCESSES[name]
    t = jnp.linspace(0.01, 0.99, 7) * sde.T
    np.testing.assert_allclose(sde.t_from_log_snr(sde.log_snr(t)), t, rtol=1e-4)
    bisected = dj.AbstractProcess.t_from_log_snr(sde, sde.log_snr(t))
    np.testing.assert_allclose(bisected, t, rtol=1e-4)
    assert bool(jnp.all(jnp.diff(sde.log_snr(t)) < 0))  # lambda decreases
    z = jnp.array([[0.3, -1.2]])
    v = float(sde.prior_std) ** 2
    ref = -0.5 * jnp.sum(z**2) / v - jnp.log(2 * jnp.pi * v)
    assert float(sde.prior_log_prob(z)[0]) == pytest.approx(float(ref), rel=1e-6)
    sample = sde.prior_sample(jax.random.key(3), (20_000, 1))
    assert float(jnp.std(sample)) == pytest.approx(float(sde.prior_std), rel=0.03)


@pytest.mark.parametrize("name", list(PROCESSES))
def test_probability_flow_transports_exact_marginals(name, eight_gaussians):
    """The PF-ODE of the exact model carries `p_t` to `p_s`.

    `log p_s(x_s)` computed through the flow from the exact `log p_t` (`likelihood.log_prob`
    between `s` and `t`) equals the exact `log p_s(x_s)` to 1e-3 nats/dim, and `decode` maps
    samples of `p_t` to samples of `p_s` (energy distance at the 2000-sample noise level).
    """
    process = PROCESSES[name]
    s_time, t_time = 0.2 * process.T, 0.7 * process.T
    model = dj.exact_model(eight_gaussians, process, "velocity")
    x_s = eight_gaussians.noised(process, s_time).sample(jax.random.key(1), 16)
    logp, _ = dj.likelihood.log_prob(
        model,
        x_s,
        divergence=dj.likelihood.Exact(),
        t_eps=s_time,
        t_max=t_time,
        prior_log_prob_fn=lambda z: eight_gaussians.log_prob(z, process, t_time),
    )
    exact = eight_gaussians.log_prob(x_s, process, s_time)
    assert float(jnp.max(jnp.abs(logp - exact))) / 2 < 1e-3
    x_t = eight_gaussians.noised(process, t_time).sample(jax.random.key(2), 2000)
    moved, _ = dj.samplers.decode(model, x_t, t_eps=s_time, t_max=t_time)
    ref = eight_gaussians.noised(process, s_time).sample(jax.random.key(3), 2000)
    assert float(dj.metrics.energy_distance(moved, ref)) < 0.006


@pytest.mark.parametrize("name", list(PROCESSES))
def test_marginal_jit_vmap_grad(name):
    sde = PROCESSES[name]
    t = jnp.linspace(0.05, 0.95, 5) * sde.T
    eager = sde.marginal(t)
    jitted = jax.jit(lambda s, tt: s.marginal(tt))(sde, t)
    mapped = jax.vmap(sde.marginal)(t)
    for e, j, m in zip(eager, jitted, mapped, strict=True):
        np.testing.assert_allclose(e, j, rtol=1e-6)
        np.testing.assert_allclose(e, m, rtol=1e-6)
    assert bool(jnp.all(jnp.isfinite(jax.vmap(jax.grad(lambda s: sde.marginal(s)[1]))(t))))
    closed = jax.jit(lambda x: sde.drift(x, t))(jnp.ones((5, 2)))
    np.testing.assert_allclose(closed, sde.drift(jnp.ones((5, 2)), t), rtol=1e-6)


def test_end_points():
    """The interpolants reach pure noise at t = 1 and the data at t = 0; EDM's sigma is t."""
    for process in (dj.RectifiedFlow(), dj.Cosine()):
        a1, s1 = process.marginal(1.0)
        a0, s0 = process.marginal(0.0)
        assert float(a1) == pytest.approx(0.0, abs=1e-7) and float(s1) == pytest.approx(1.0)
        assert float(a0) == pytest.approx(1.0) and float(s0) == pytest.approx(0.0)
        assert process.t_max < process.T
    edm = dj.EDM(sigma_min=0.002, sigma_max=80.0)
    assert edm.T == 80.0 and edm.t_eps == 0.002
    np.testing.assert_allclose(edm.marginal(jnp.array([0.5, 3.0]))[1], [0.5, 3.0])


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: dj.VPSDE(beta_min=30.0, beta_max=20.0), ValueError, "beta_min"),
        (lambda: dj.VPSDE(beta_min=-0.1), ValueError, "beta_min"),
        (lambda: dj.SubVPSDE(beta_max="20"), TypeError, "beta_max"),
        (lambda: dj.VESDE(sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_min"),
        (lambda: dj.VPSDE(T=0.0), ValueError, r"[`']T[`']"),
        (lambda: dj.EDM(sigma_min=1.0, sigma_max=0.5), ValueError, "sigma_min"),
        (lambda: dj.EDM(sigma_max="80"), TypeError, "sigma_max"),
        (
            lambda: dj.q_sample(dj.VPSDE(), jnp.ones((2, 3)), 1.5, jnp.ones((2, 3))),
            ValueError,
            r"\[0, T\]",
        ),
        (
            lambda: dj.q_sample(dj.VPSDE(), jnp.ones((2, 3)), jnp.nan, jnp.ones((2, 3))),
            ValueError,
            r"\[0, T\]",
        ),
        (
            lambda: dj.q_sample(dj.VPSDE(), jnp.ones((3, 2)), jnp.ones(4) * 0.5, jnp.ones((3, 2))),
            ValueError,
            r"[`']t[`']",
        ),
        (
            lambda: dj.q_sample(dj.VPSDE(), jnp.ones((2, 2), bool), 0.5, jnp.ones((2, 2))),
            TypeError,
            "`x0`",
        ),
        (lambda: dj.VPSDE().prior_sample(jax.random.key(0), (-1, 2)), ValueError, "shape"),
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
