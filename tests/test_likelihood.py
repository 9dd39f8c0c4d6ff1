"""Tests for `diffjax.likelihood`: PF-ODE log-likelihood against closed-form log-densities.

Every reference is exact: a Gaussian or Gaussian mixture pushed through the SDE has a
closed-form `p_t`, and its exact score drives the ODE. `log_prob` starts at `t_eps`, so it
estimates `log p_{t_eps}`, which is what we compare with (and we check that it is within
tolerance of `log p_0` too). Where the exact `p_T` is used as the prior (`prior_log_prob_fn`),
the only error left is the ODE solver's.

Compilations are the cost here: one jitted function takes the distribution and the SDE as
pytree arguments, so one compilation serves every distribution of the same shapes.
"""

from __future__ import annotations

import functools
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diffjax as dj
from diffjax.data import eight_gaussians_params
from diffjax.likelihood import bits_per_dim, dequantize, log_prob

T_EPS = 1e-5


@functools.partial(jax.jit, static_argnames=("divergence", "exact_prior", "probe", "num_probes"))
def _log_prob(
    dist, sde, x, key, divergence="exact", exact_prior=True, probe="rademacher", num_probes=1
):
    """`log_prob` with the exact score of `dist`; the prior is the exact `p_T` if asked."""
    prior = (lambda z: dist.log_prob(z, sde, sde.T)) if exact_prior else None
    return log_prob(
        dj.exact_score(dist, sde),
        sde,
        x,
        key=key,
        divergence=divergence,
        probe=probe,
        num_probes=num_probes,
        t_eps=T_EPS,
        prior_log_prob_fn=prior,
    )


def _random_gaussian(key, dim: int) -> dj.GaussianMixture:
    """`N(mu, diag(sigma^2))` with `mu ~ U[-2, 2]^D`, `sigma ~ U[0.3, 1.5]^D`."""
    k_mean, k_std = jax.random.split(key)
    mean = jax.random.uniform(k_mean, (dim,), minval=-2.0, maxval=2.0)
    std = jax.random.uniform(k_std, (dim,), minval=0.3, maxval=1.5)
    return dj.gaussian(mean, std)


def _eight_gaussians() -> dj.GaussianMixture:
    """The 8-Gaussian ring of radius 2, components widened to std 0.3 (less stiff near t = 0)."""
    return dj.GaussianMixture(*eight_gaussians_params(std=0.3))


def _max_error_per_dim(logp, ref, dim: int) -> float:
    return float(jnp.max(jnp.abs(logp - ref))) / dim


@pytest.mark.parametrize("dim", [1, 2, 16])
def test_gaussian_exact_divergence_matches_log_density(dim):
    dist = _random_gaussian(jax.random.key(dim), dim)
    x = dist.sample(jax.random.key(100 + dim), 32)
    sde = dj.VPSDE()
    logp, info = _log_prob(dist, sde, x, jax.random.key(0))
    ref = dist.log_prob(x, sde, T_EPS)
    assert _max_error_per_dim(logp, ref, dim) < 1e-3
    # The truncation at t_eps: log p_{t_eps} is within tolerance of log p_0 for this data.
    assert _max_error_per_dim(ref, dist.log_prob(x), dim) < 1e-4
    # info is consistent: logp = prior(z) + delta_logp, z = x_T is a draw of p_T (shape).
    np.testing.assert_allclose(logp, info["prior_log_prob"] + info["delta_logp"], rtol=1e-6)
    assert info["z"].shape == x.shape
    np.testing.assert_allclose(
        info["prior_log_prob"], dist.log_prob(info["z"], sde, sde.T), rtol=1e-6
    )
    assert int(info["nfe"]) > 0


@pytest.mark.parametrize("sde", [dj.VPSDE(), dj.SubVPSDE(), dj.VESDE()], ids=["vp", "subvp", "ve"])
def test_every_sde_passes_the_gaussian_check(sde):
    dim = 2
    dist = _random_gaussian(jax.random.key(7), dim)
    x = dist.sample(jax.random.key(8), 32)
    logp, _ = _log_prob(dist, sde, x, jax.random.key(0))
    assert _max_error_per_dim(logp, dist.log_prob(x, sde, T_EPS), dim) < 1e-3


def test_default_prior_on_centred_data():
    """The default `N(0, I)` prior on centred data: `p_T` has variance `1 + a_T^2 (sigma^2 - 1)`
    with `a_T = mean_coeff(1) ~ 6.7e-3`, a negligible gap (the mean gap `a_T |mu|` is zero)."""
    dim = 16
    dist = dj.gaussian(jnp.zeros(dim), jnp.linspace(0.5, 1.5, dim))
    x = dist.sample(jax.random.key(3), 32)
    sde = dj.VPSDE()
    logp, _ = _log_prob(dist, sde, x, jax.random.key(0), exact_prior=False)
    assert _max_error_per_dim(logp, dist.log_prob(x, sde, T_EPS), dim) < 1e-3


def test_sign_of_the_volume_term():
    """Data narrower than the prior is compressed by the flow to `T`: delta_logp > 0."""
    dist = dj.gaussian(jnp.zeros(2), jnp.full(2, 0.3))  # same dtypes: no recompilation
    x = dist.sample(jax.random.key(4), 32)
    sde = dj.VPSDE()
    logp, info = _log_prob(dist, sde, x, jax.random.key(0))
    # Exactly: delta = log p_{t_eps}(x) - log p_T(z) and the density ratio is (1 / 0.3^2)
    # up to the quadratic terms, so the mean is about 2 log(1 / 0.3) > 0.
    assert float(jnp.mean(info["delta_logp"])) > 1.0
    assert _max_error_per_dim(logp, dist.log_prob(x, sde, T_EPS), 2) < 1e-3


@pytest.fixture(scope="module")
def mixture_case():
    dist = _eight_gaussians()
    x = dist.sample(jax.random.key(11), 64)
    sde = dj.VPSDE()
    logp, _ = _log_prob(dist, sde, x, jax.random.key(0))
    return dist, sde, x, logp


def test_eight_gaussians_exact_divergence(mixture_case):
    dist, sde, x, logp = mixture_case
    assert _max_error_per_dim(logp, dist.log_prob(x, sde, T_EPS), 2) < 5e-3
    assert _max_error_per_dim(logp, dist.log_prob(x), 2) < 5e-3


@pytest.mark.parametrize("probe, num_probes", [("rademacher", 1), ("gaussian", 2)])
def test_hutchinson_is_unbiased_on_a_mixture(mixture_case, probe, num_probes):
    """Each of 4 points is repeated 256 times in one batch; each copy gets its own probes."""
    dist, sde, x, exact = mixture_case
    points, copies = 4, 256
    x_rep = jnp.repeat(x[:points], copies, axis=0)
    logp, _ = _log_prob(
        dist, sde, x_rep, jax.random.key(5), "hutchinson", probe=probe, num_probes=num_probes
    )
    est = np.asarray(logp).reshape(points, copies)
    mean, se = est.mean(axis=1), est.std(axis=1, ddof=1) / math.sqrt(copies)
    # The estimator is not trivially exact here (else the test could not fail).
    assert se.max() > 1e-2
    # Four standard errors, plus 2e-3 nats for the two solves' own (deterministic) ODE error.
    np.testing.assert_array_less(np.abs(mean - np.asarray(exact[:points])), 4 * se + 2e-3)


def test_images_hutchinson_exact_for_diagonal_gaussian():
    """`[B, 8, 8, 1]` events; for a diagonal Jacobian a Rademacher probe gives the exact trace."""
    event = (8, 8, 1)
    k_mean, k_std, k_x = jax.random.split(jax.random.key(9), 3)
    mean = jax.random.uniform(k_mean, event, minval=-1.0, maxval=1.0)
    std = jax.random.uniform(k_std, event, minval=0.3, maxval=1.0)
    dist = dj.gaussian(mean, std)
    x = dist.sample(k_x, 8)
    sde = dj.VPSDE()
    logp, info = _log_prob(dist, sde, x, jax.random.key(1), divergence="hutchinson")
    assert logp.shape == (8,) and info["z"].shape == x.shape
    assert _max_error_per_dim(logp, dist.log_prob(x, sde, T_EPS), 64) < 1e-3


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Heun()], ids=["fsal", "no-fsal"])
def test_nfe_counts_model_evaluations(solver):
    """`info['nfe']` equals the number of times the score model actually ran."""
    calls = []
    dist = dj.gaussian(jnp.zeros(1), 0.5)
    exact = dj.exact_score(dist, dj.VPSDE())

    def counted_score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact(x, t)

    x = dist.sample(jax.random.key(2), 4)
    _, info = jax.jit(
        lambda x: log_prob(
            counted_score, dj.VPSDE(), x, divergence="exact", solver=solver, rtol=1e-3, atol=1e-3
        )
    )(x)
    jax.effects_barrier()
    assert int(info["nfe"]) == len(calls) > 0


def test_gradient_wrt_model_parameter():
    """`jax.grad` of the mean logp through the adaptive solve matches a central difference."""
    dist = dj.gaussian(jnp.zeros(2), 0.5)
    sde = dj.VPSDE()
    exact = dj.exact_score(dist, sde)
    x = dist.sample(jax.random.key(6), 16)
    key = jax.random.key(7)

    @jax.jit
    @jax.value_and_grad
    def mean_logp(scale):
        logp, _ = log_prob(lambda x, t: scale * exact(x, t), sde, x, key=key)
        return jnp.mean(logp)

    grad = float(mean_logp(jnp.float32(1.1))[1])
    h = 1e-2  # one compilation: the values for the central difference come from the same call
    fd = float(mean_logp(jnp.float32(1.1 + h))[0] - mean_logp(jnp.float32(1.1 - h))[0]) / (2 * h)
    assert np.isfinite(grad)
    assert abs(grad - fd) < 0.02 * abs(fd) + 1e-3


def test_bits_per_dim_matches_hand_computation():
    """A Gaussian in [-1, 1] units on dequantized 8-bit data, converted by hand in [0, 256)."""
    dim, std = 6, 0.5
    k_int, k_u = jax.random.split(jax.random.key(12))
    ints = jax.random.randint(k_int, (32, dim), 0, 256)
    x = dequantize(k_u, ints)
    # Dequantization is k + U[0, 1) rescaled to [-1, 1): recover k and the offset.
    u = (np.asarray(x, np.float64) + 1.0) * 128.0
    offset = u - np.asarray(ints)
    assert np.all(offset > -1e-4) and np.all(offset < 1 + 1e-4) and offset.std() > 0.2
    assert np.all(np.asarray(x) >= -1.0) and np.all(np.asarray(x) < 1.0)
    logp = dj.gaussian(jnp.zeros(dim), std).log_prob(x)
    bpd = bits_per_dim(logp, (dim,))
    # In [0, 256) units the model is N(128, (128 std)^2) per dimension.
    hand = -stats.norm.logpdf(u, loc=128.0, scale=128.0 * std).sum(axis=1) / (dim * np.log(2))
    np.testing.assert_allclose(bpd, hand, rtol=1e-5)
    # The uniform density on the data range is exactly log2(256) = 8 bits/dim; for 17-level data
    # on [0, 1] it is log2(17).
    assert float(bits_per_dim(jnp.full((1,), -dim * np.log(2.0)), (dim,))[0]) == pytest.approx(8)
    uniform = bits_per_dim(jnp.zeros((1,)), (2, 3), data_range=17, data_interval=(0.0, 1.0))
    assert float(uniform[0]) == pytest.approx(np.log2(17), rel=1e-6)


def test_bad_input_raises_clear_errors():
    dist = dj.gaussian(jnp.zeros(2), 1.0)
    sde = dj.VPSDE()
    score = dj.exact_score(dist, sde)
    x = jnp.zeros((4, 2))
    key = jax.random.key(0)
    cases = [
        (dict(t_eps=0.0), ValueError, "t_eps"),
        (dict(t_eps=1.0), ValueError, "t_eps"),
        (dict(key=None), ValueError, "key"),
        (dict(key="seed"), TypeError, "key"),
        (dict(divergence="trace"), ValueError, "divergence"),
        (dict(probe="sphere"), ValueError, "probe"),
        (dict(num_probes=0), ValueError, "num_probes"),
        (dict(num_probes=1.5), TypeError, "num_probes"),
        (dict(rtol=-1.0), ValueError, "rtol"),
        (dict(solver="tsit5"), TypeError, "solver"),
        (dict(prior_log_prob_fn=lambda z: z), ValueError, "prior_log_prob_fn"),
    ]
    for kwargs, error, name in cases:
        with pytest.raises(error, match=name):
            log_prob(score, sde, x, **{"key": key, **kwargs})
    with pytest.raises(ValueError, match="`x`"):
        log_prob(score, sde, jnp.zeros(2), key=key)
    with pytest.raises(ValueError, match="score_fn"):
        log_prob(lambda x, t: x[:, :1], sde, x, key=key)
    with pytest.raises(ValueError, match="score_fn"):
        log_prob(score, sde, jnp.zeros((4, 3)), key=key)  # the score expects 2-D events
    with pytest.raises(TypeError, match="score_fn"):
        log_prob(None, sde, x, key=key)
    with pytest.raises(TypeError, match="sde"):
        log_prob(score, dj.schedules.linear(10), x, key=key)
    with pytest.raises(ValueError, match="`x`"):
        dequantize(key, jnp.array([[0.5, 256.0]]))
    with pytest.raises(ValueError, match="data_interval"):
        bits_per_dim(jnp.zeros(1), (2,), data_interval=(1.0, -1.0))
    with pytest.raises(TypeError, match="event_shape"):
        bits_per_dim(jnp.zeros(1), 64)
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(jnp.zeros(1), (2,), data_range=0)
