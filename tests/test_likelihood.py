"""Tests for `diffjax.likelihood`: PF-ODE log-likelihood against closed-form log-densities.

Every reference is exact: a Gaussian or Gaussian mixture pushed through a Gaussian path has a
closed-form `p_t`, and its exact model (`dj.exact_model`) drives the ODE. `log_prob` starts at
`t_eps`, so it estimates `log p_{t_eps}`, which is what we compare with (and we check that it is
within tolerance of `log p_0` too). Where the exact `p_{t_max}` is used as the prior
(`prior_log_prob_fn`), the only error left is the ODE solver's.

Compilations are the cost here: one jitted function takes the distribution and the process as
pytree arguments, so one compilation serves every distribution of the same shapes on the same
process type (the Gaussians of the all-process check are padded to the mixture's shapes).
"""

from __future__ import annotations

import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CONTINUOUS_PROCESSES
from scipy import stats

import diffjax as dj
from diffjax.data import eight_gaussians_params
from diffjax.likelihood import Exact, Hutchinson, bits_per_dim, dequantize, log_prob

T_EPS = 1e-5
EXACT = Exact()


@eqx.filter_jit
def _log_prob(dist, process, x, key, divergence=EXACT, exact_prior=True, prediction="score"):
    """`log_prob` with the exact model of `dist`; the prior is the exact `p_{t_max}` if asked.

    `filter_jit`: the distribution, the process's arrays, `x` and `key` are traced; the
    divergence object, the flags and the prediction kind are static.
    """
    t_max = process.t_max
    prior = (lambda z: dist.log_prob(z, process, t_max)) if exact_prior else None
    return log_prob(
        dj.exact_model(dist, process, prediction),
        x,
        key=key,
        divergence=divergence,
        t_eps=T_EPS,
        prior_log_prob_fn=prior,
    )


def _random_gaussian(key, dim: int) -> dj.GaussianMixture:
    """`N(mu, diag(sigma^2))` with `mu ~ U[-2, 2]^D`, `sigma ~ U[0.3, 1.5]^D`."""
    k_mean, k_std = jax.random.split(key)
    mean = jax.random.uniform(k_mean, (dim,), minval=-2.0, maxval=2.0)
    std = jax.random.uniform(k_std, (dim,), minval=0.3, maxval=1.5)
    return dj.gaussian(mean, std)


# Weights of the three-component layout shared by the D = 2 cases (one compilation per process
# and prediction kind serves them all).
_WEIGHTS = jnp.array([0.2, 0.3, 0.5])


def _as_three_components(dist: dj.GaussianMixture) -> dj.GaussianMixture:
    """A one-component mixture (a Gaussian) as three identical components: the same density
    with the pytree shapes of the three-component mixtures, so it shares their compilation."""
    return dj.GaussianMixture(
        _WEIGHTS, jnp.repeat(dist.means, 3, axis=0), jnp.repeat(dist.stds, 3, axis=0)
    )


def _eight_gaussians() -> dj.GaussianMixture:
    """The 8-Gaussian ring of radius 2, components widened to std 0.3 (less stiff near t = 0)."""
    return dj.GaussianMixture(*eight_gaussians_params(std=0.3))


def _max_error_per_dim(logp, ref, dim: int) -> float:
    return float(jnp.max(jnp.abs(logp - ref))) / dim


@pytest.mark.parametrize("dim", [1, 2, 16])
def test_gaussian_exact_divergence_matches_log_density(dim):
    dist = _random_gaussian(jax.random.key(dim), dim)
    x = dist.sample(jax.random.key(100 + dim), 32)
    if dim == 2:
        dist = _as_three_components(dist)  # same density, shared compilation
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
        info["prior_log_prob"], dist.log_prob(info["z"], sde, sde.t_max), rtol=1e-6
    )
    assert int(info["nfe"]) > 0


@pytest.mark.parametrize("sde", [dj.VPSDE(), dj.SubVPSDE(), dj.VESDE()], ids=["vp", "subvp", "ve"])
def test_every_sde_passes_the_gaussian_check(sde):
    dim = 2
    dist = _random_gaussian(jax.random.key(7), dim)
    x = dist.sample(jax.random.key(8), 32)
    dist = _as_three_components(dist)  # same density, shared compilation
    logp, _ = _log_prob(dist, sde, x, jax.random.key(0))
    assert _max_error_per_dim(logp, dist.log_prob(x, sde, T_EPS), dim) < 1e-3


# ----------------------------------------------------------------------------- every process

PROCESSES = CONTINUOUS_PROCESSES

_STD = jnp.array([[0.4, 0.7], [0.6, 0.3], [0.5, 0.5]])


@pytest.fixture(scope="module")
def small_cases():
    """A 2-D Gaussian and a 3-component diagonal 2-D mixture, with 32 points of each.

    The Gaussian is written as a mixture of three identical components (the same density as
    `dj.gaussian`, checked here), so both distributions have the same pytree shapes (those of
    the other D = 2 cases above) and share one compilation per process and prediction kind.
    """
    mean, std = jnp.array([0.8, -0.5]), jnp.array([0.6, 1.2])
    gauss = _as_three_components(dj.gaussian(mean, std))
    mixture = dj.GaussianMixture(_WEIGHTS, jnp.array([[-1.5, 0.5], [1.0, 1.0], [0.5, -1.5]]), _STD)
    cases = {}
    for name, dist in (("gaussian", gauss), ("mixture", mixture)):
        x = dist.sample(jax.random.key(21 + len(cases)), 32)
        cases[name] = (dist, x)
    x = cases["gaussian"][1]
    np.testing.assert_allclose(
        gauss.log_prob(x), dj.gaussian(mean, std).log_prob(x), rtol=1e-6, atol=1e-6
    )
    return cases


@pytest.mark.parametrize("prediction", ["score", "velocity"])
@pytest.mark.parametrize("name", list(PROCESSES))
def test_every_process_matches_the_analytic_log_density(small_cases, name, prediction):
    """For every path and both a score and a velocity model, the PF-ODE log-likelihood with the
    exact model and the exact `p_{t_max}` prior is the analytic `log p_{t_eps}` to 1e-3
    nats/dim (Exact divergence), for a Gaussian and for a mixture (one compilation for both)."""
    process = PROCESSES[name]
    for dist, x in small_cases.values():
        logp, info = _log_prob(dist, process, x, jax.random.key(0), prediction=prediction)
        assert _max_error_per_dim(logp, dist.log_prob(x, process, T_EPS), 2) < 1e-3
        np.testing.assert_allclose(
            info["prior_log_prob"], dist.log_prob(info["z"], process, process.t_max), rtol=1e-6
        )


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
    # Same shapes as the other D = 2 cases: no recompilation.
    dist = _as_three_components(dj.gaussian(jnp.zeros(2), jnp.full(2, 0.3)))
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


def _check_unbiased(exact, logp, points: int, copies: int):
    """Per point: the mean of `copies` Hutchinson estimates is the exact-divergence value within
    four standard errors plus 2e-3 nats (the two solves' own deterministic ODE error)."""
    est = np.asarray(logp).reshape(points, copies)
    mean, se = est.mean(axis=1), est.std(axis=1, ddof=1) / math.sqrt(copies)
    # The estimator is not trivially exact here (else the test could not fail).
    assert se.max() > 1e-2
    np.testing.assert_array_less(np.abs(mean - np.asarray(exact[:points])), 4 * se + 2e-3)


@pytest.mark.parametrize("probe, num_probes", [("rademacher", 1), ("gaussian", 2)])
def test_hutchinson_is_unbiased_on_a_mixture(mixture_case, probe, num_probes):
    """Each of 4 points is repeated 256 times in one batch; each copy gets its own probes."""
    dist, sde, x, exact = mixture_case
    points, copies = 4, 256
    x_rep = jnp.repeat(x[:points], copies, axis=0)
    logp, _ = _log_prob(dist, sde, x_rep, jax.random.key(5), Hutchinson(num_probes, probe))
    _check_unbiased(exact, logp, points, copies)


def test_hutchinson_is_unbiased_for_a_flow_matching_model(small_cases):
    """The same check for a velocity model on the rectified-flow path (the mixture of
    `small_cases`): Hutchinson's mean matches `Exact()` (4 points x 256 copies)."""
    dist, x = small_cases["mixture"]
    rf = PROCESSES["rf"]
    exact, _ = _log_prob(dist, rf, x, jax.random.key(0), prediction="velocity")  # compiled above
    # The exact divergence itself is right (so agreement with it is agreement with the truth).
    assert _max_error_per_dim(exact, dist.log_prob(x, rf, T_EPS), 2) < 1e-3
    x_rep = jnp.repeat(x[:4], 256, axis=0)
    logp, _ = _log_prob(dist, rf, x_rep, jax.random.key(6), Hutchinson(), prediction="velocity")
    _check_unbiased(exact, logp, 4, 256)


def test_images_hutchinson_exact_for_diagonal_gaussian():
    """`[B, 8, 8, 1]` events; for a diagonal Jacobian a Rademacher probe gives the exact trace."""
    event = (8, 8, 1)
    k_mean, k_std, k_x = jax.random.split(jax.random.key(9), 3)
    mean = jax.random.uniform(k_mean, event, minval=-1.0, maxval=1.0)
    std = jax.random.uniform(k_std, event, minval=0.3, maxval=1.0)
    dist = dj.gaussian(mean, std)
    x = dist.sample(k_x, 8)
    sde = dj.VPSDE()
    logp, info = _log_prob(dist, sde, x, jax.random.key(1), divergence=Hutchinson())
    assert logp.shape == (8,) and info["z"].shape == x.shape
    assert _max_error_per_dim(logp, dist.log_prob(x, sde, T_EPS), 64) < 1e-3


@pytest.mark.parametrize("solver", [diffrax.Tsit5(), diffrax.Heun()], ids=["fsal", "no-fsal"])
def test_nfe_counts_model_evaluations(solver):
    """`info['nfe']` equals the number of times the model actually ran."""
    calls = []
    dist = dj.gaussian(jnp.zeros(1), 0.5)
    vp = dj.VPSDE()
    exact = dj.exact_model(dist, vp)

    def counted_score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact(x, t)

    model = dj.Model(counted_score, vp, "score")
    x = dist.sample(jax.random.key(2), 4)
    controller = diffrax.PIDController(rtol=1e-3, atol=1e-3)
    _, info = jax.jit(
        lambda x: log_prob(
            model, x, divergence=EXACT, solver=solver, stepsize_controller=controller
        )
    )(x)
    jax.effects_barrier()
    assert int(info["nfe"]) == len(calls) > 0


def test_gradient_wrt_model_parameter():
    """`jax.grad` of the mean logp through the adaptive solve matches a central difference."""
    dist = dj.gaussian(jnp.zeros(2), 0.5)
    sde = dj.VPSDE()
    exact = dj.exact_model(dist, sde)
    x = dist.sample(jax.random.key(6), 16)
    key = jax.random.key(7)

    @jax.jit
    @jax.value_and_grad
    def mean_logp(scale):
        model = dj.Model(lambda p, x, t: p * exact(x, t), sde, "score", params=scale)
        logp, _ = log_prob(model, x, key=key)
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
    model = dj.exact_model(dist, sde)
    x = jnp.zeros((4, 2))
    key = jax.random.key(0)
    cases = [
        (dict(t_eps=0.0), ValueError, "t_eps"),
        (dict(t_eps=1.0), ValueError, "t_eps"),
        (dict(key=None), ValueError, "key"),
        (dict(key="seed"), TypeError, "key"),
        # The divergence is an object now: a string is a type error.
        (dict(divergence="trace"), TypeError, "divergence"),
        (dict(divergence="exact"), TypeError, "divergence"),
        # Tolerances live in the controller now (`rtol=` is gone).
        (dict(stepsize_controller="pid"), TypeError, "stepsize_controller"),
        (dict(solver="tsit5"), TypeError, "solver"),
        (dict(solver=diffrax.Euler()), TypeError, "solver"),  # no error estimate
        (dict(max_steps=0), ValueError, "max_steps"),
        (dict(prior_log_prob_fn=lambda z: z), ValueError, "prior_log_prob_fn"),
        (dict(prior_log_prob_fn="normal"), TypeError, "prior_log_prob_fn"),
    ]
    for kwargs, error, name in cases:
        with pytest.raises(error, match=name):
            log_prob(model, x, **{"key": key, **kwargs})
    # The probe options are checked when the estimator is built.
    with pytest.raises(ValueError, match="probe"):
        Hutchinson(probe="sphere")
    with pytest.raises(ValueError, match="num_probes"):
        Hutchinson(num_probes=0)
    with pytest.raises(TypeError, match="num_probes"):
        Hutchinson(num_probes=1.5)
    with pytest.raises(ValueError, match=r"[`']x[`']"):
        log_prob(model, jnp.zeros(2), key=key)
    with pytest.raises(ValueError, match="model"):
        log_prob(dj.Model(lambda x, t: x[:, :1], sde, "score"), x, key=key)
    with pytest.raises(ValueError, match="model"):
        log_prob(model, jnp.zeros((4, 3)), key=key)  # the model expects 2-D events
    with pytest.raises(TypeError, match="model"):
        log_prob(None, x, key=key)
    with pytest.raises(TypeError, match="model"):
        log_prob(lambda x, t: x, x, key=key)  # a bare function is not a Model
    sch = dj.schedules.linear(10)
    with pytest.raises(TypeError, match="continuous process"):
        log_prob(dj.exact_model(dist, sch, "eps"), x, key=key)
    with pytest.raises(ValueError, match=r"[`']x[`']"):
        dequantize(key, jnp.array([[0.5, 256.0]]))
    with pytest.raises(ValueError, match="data_interval"):
        bits_per_dim(jnp.zeros(1), (2,), data_interval=(1.0, -1.0))
    with pytest.raises(TypeError, match="event_shape"):
        bits_per_dim(jnp.zeros(1), 64)
    with pytest.raises(ValueError, match="data_range"):
        bits_per_dim(jnp.zeros(1), (2,), data_range=0)


def test_truncated_normal_dequantization_bounds_the_discrete_likelihood():
    """Levels 0..4 in [-1, 1] (bins of half-width h = 1/4); the data are three points of the
    level grid, so the exact `p_{t_eps}` is the mixture at the bin centres with std `s`. Then
    `q` is scipy's truncated normal on the bin, and the bound is exactly
    `log P(k) + D log Z`, `Z = erf(tau / sqrt 2)`, per draw (the other points are >= 2 bins away)."""
    levels, half, dim = 5, 0.25, 2
    interval = (-1.0 - half, 1.0 + half)
    ks = np.array([[0, 4], [2, 2], [4, 1]])
    weights = np.array([0.2, 0.5, 0.3])
    centres = interval[0] + 2 * half * (ks + 0.5)
    sde = dj.VPSDE()
    t_eps = 0.027  # s = 0.1: tau = 2.5
    a, s = (float(c) for c in sde.marginal(jnp.float32(t_eps)))
    mix = dj.GaussianMixture(weights, centres, np.full(3, 1e-4))
    ints = jnp.asarray(np.repeat(ks, 200, axis=0), jnp.float32)
    x_t, log_q = dj.likelihood.truncated_normal_dequantize(
        jax.random.key(3), ints, sde, t_eps, data_range=levels, data_interval=interval
    )
    c = interval[0] + 2 * half * (np.asarray(ints) + 0.5)
    eps = (np.asarray(x_t, np.float64) - a * c) / s
    tau = a * half / s
    assert np.all(np.abs(eps) <= tau * (1 + 1e-5)) and eps.std() > 0.8  # in the bin, spread
    ref = stats.truncnorm.logpdf(eps, -tau, tau).sum(1) - dim * np.log(s) + dim * np.log(2 * half)
    np.testing.assert_allclose(log_q, ref, rtol=1e-5, atol=1e-4)
    logp = mix.log_prob(x_t, sde, t_eps)
    bpd = bits_per_dim(logp - log_q, (dim,), data_range=levels, data_interval=interval)
    log_z = np.log(math.erf(tau / math.sqrt(2)))
    exact = -(np.log(np.repeat(weights, 200)) + dim * log_z) / (dim * np.log(2))
    np.testing.assert_allclose(bpd, exact, atol=2e-4)
    with pytest.raises(TypeError, match="process"):
        dj.likelihood.truncated_normal_dequantize(jax.random.key(0), ints, None, t_eps)
    with pytest.raises(ValueError, match="t_eps"):
        dj.likelihood.truncated_normal_dequantize(jax.random.key(0), ints, sde, 0.0)
    with pytest.raises(ValueError, match=r"[`']x[`']"):
        dj.likelihood.truncated_normal_dequantize(jax.random.key(0), ints + 0.5, sde, t_eps)
