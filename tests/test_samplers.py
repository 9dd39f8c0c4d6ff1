"""Samplers checked against exact Gaussian-mixture references (no training).

The models are exact (`dj.exact_model`), so any gap to the true samples is the sampler's own
error. Energy distances compare 4000 samples with 4000 fresh true samples (noise level about
0.0015 in 2-D) and per-mode stds are checked too; every key is fixed.
"""

from __future__ import annotations

from types import SimpleNamespace

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_matches_mixture

import diffjax as dj
from diffjax import samplers
from diffjax.metrics import energy_distance

N = 4000
TOL = 0.003  # energy-distance threshold, about twice its 4000-sample noise level


def _eight_gaussians():
    angles = 2 * np.pi * np.arange(8) / 8
    means = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    return dj.GaussianMixture(np.full(8, 1 / 8), means, np.full(8, 0.1))


class _Reshaped(eqx.Module):
    """A model on flat vectors seen through image-shaped states `[B, *image]`."""

    model: dj.Model
    event_shape: tuple = eqx.field(static=True)

    def __call__(self, x, t):
        flat = x.reshape((x.shape[0],) + self.event_shape)
        return self.model(flat, t).reshape(x.shape)


def _problem(gmm, model_shape=None):
    """Exact models for the linear DDPM schedule and the matching VP SDE.

    With `model_shape`, the models reshape `x` to the mixture's event shape and back (the mixture
    lives on flat vectors; the samplers see images).
    """
    sch = dj.schedules.linear(1000)
    vp = dj.VPSDE.from_ddpm(1000)

    def exact(process, kind):
        m = dj.exact_model(gmm, process, kind)
        if model_shape is None:
            return m
        return dj.Model(_Reshaped(m, gmm.event_shape), process, kind)

    return SimpleNamespace(
        gmm=gmm, sch=sch, vp=vp, eps=exact(sch, "eps"), eps_vp=exact(vp, "eps"),
        score=exact(vp, "score"),
    )  # fmt: skip


# Each sampler at its natural step count, with intermediate states saved.
RUNS = {
    "ddpm": lambda k, m, shape: samplers.ddpm(k, m.eps, shape, save_times=[500, 100]),
    "ddim": lambda k, m, shape: samplers.ddim(k, m.eps, shape, grid="quadratic", save_times=[500]),
    "reverse_sde": lambda k, m, shape: samplers.reverse_sde(k, m.score, shape, save_times=[0.5, 0.1]),
    # Batch-mean norms in the corrector's SNR rule (the default): with per-example norms the
    # state's std at t = 0.5 grows from 1.0 to 1.5 in 2-D.
    "predictor_corrector": lambda k, m, shape: samplers.predictor_corrector(
        k, m.score, shape, save_times=[0.5]
    ),
    "ode": lambda k, m, shape: samplers.probability_flow(k, m.score, shape, save_times=[0.5, 0.1]),
    "dpm_solver": lambda k, m, shape: samplers.dpm_solver(
        k, m.eps_vp, shape, num_steps=20, save_times=[0.5]
    ),
}
NFE = {"ddpm": 1000, "ddim": 50, "reverse_sde": 1001 + 2, "predictor_corrector": 1001, "dpm_solver": 21}


@pytest.fixture(scope="module")
def mix2d():
    return _problem(_eight_gaussians())


@pytest.fixture(scope="module")
def ref2d(mix2d):
    return mix2d.gmm.sample(jax.random.key(1), N)


@pytest.fixture(scope="module")
def runs2d(mix2d):
    return {name: run(jax.random.key(0), mix2d, (N, 2)) for name, run in RUNS.items()}


@pytest.mark.parametrize("name", list(RUNS))
def test_energy_distance_and_mode_stds_2d(name, runs2d, ref2d, mix2d):
    x, info = runs2d[name]
    assert x.shape == (N, 2)
    assert_matches_mixture(x, mix2d.gmm, ref2d)
    assert info.nfe.dtype == jnp.int32
    if name in NFE:
        assert int(info.nfe) == NFE[name]


@pytest.mark.parametrize("name", list(RUNS))
def test_intermediate_states_follow_exact_marginals(name, runs2d, mix2d):
    """`info.trajectory[j]` is distributed as `p_t` at `t = info.times[j]`."""
    _, info = runs2d[name]
    process = mix2d.sch if name in ("ddpm", "ddim") else mix2d.vp
    assert info.trajectory.shape == (info.times.shape[0], N, 2)
    assert bool(jnp.all(jnp.diff(info.times) < 0))  # sampling order
    for j, (x_t, t) in enumerate(zip(info.trajectory, info.times, strict=True)):
        exact = mix2d.gmm.noised(process, t).sample(jax.random.key(10 + j), N)
        assert float(energy_distance(x_t, exact)) < TOL, (name, float(t))
    if name in ("ddpm", "reverse_sde", "ode"):  # these save exactly at the requested times
        requested = [500, 100][: info.times.shape[0]] if name == "ddpm" else [0.5, 0.1]
        np.testing.assert_allclose(info.times, requested, rtol=1e-5)


def test_ode_nfe_counts_tsit5_stages(runs2d):
    _, info = runs2d["ode"]
    # Tsit5 is FSAL: one evaluation at the start, six per step; one more to denoise.
    assert int(info.nfe) == 1 + 6 * int(info.num_steps) + 1


@pytest.mark.parametrize(
    "sampler, solver",
    [
        (samplers.probability_flow, dfx.ReversibleHeun()),
        (samplers.reverse_sde, dfx.Euler()),
        (samplers.reverse_sde, dfx.EulerHeun()),
        (samplers.reverse_sde, dfx.ItoMilstein()),
        (samplers.reverse_sde, dfx.SPaRK()),
    ],
    ids=["ode-reversible-heun", "sde-euler", "sde-euler-heun", "sde-milstein", "sde-spark"],
)
def test_nfe_counts_model_evaluations_of_any_solver(sampler, solver):
    """`info.nfe` equals the number of times the model ran, for solvers without a tableau
    (counted) as for tableau ones, with the final denoising step."""
    calls = []
    dist = dj.gaussian(jnp.zeros(1), 0.5)
    exact = dj.exact_model(dist, dj.VPSDE())

    def counted_score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact(x, t)

    model = dj.Model(counted_score, exact.process, "score")
    _, info = sampler(jax.random.key(0), model, (4, 1), num_steps=7, solver=solver)
    jax.effects_barrier()
    assert int(info.nfe) == len(calls) > 7
    # The same count when the sampler is traced inside an outer `jit`.
    jitted = jax.jit(lambda k: sampler(k, model, (4, 1), num_steps=7, solver=solver)[1].nfe)
    assert int(jitted(jax.random.key(0))) == int(info.nfe)


def test_process_argument_moves_the_model(mix2d, ref2d):
    """A VP model sampled on EDM's grid (`process=`) by log-SNR matching."""
    x, _ = samplers.dpm_solver(jax.random.key(0), mix2d.eps_vp, (N, 2), process=dj.EDM(sigma_max=100.0))
    assert_matches_mixture(x, mix2d.gmm, ref2d)


# ---------------------------------------------------------------- images, convergence, solvers
@pytest.fixture(scope="module")
def mix_images():
    means = 0.25 * jax.random.normal(jax.random.key(5), (4, 64))
    return _problem(dj.GaussianMixture(np.full(4, 1 / 4), means, np.full(4, 0.1)), (8, 8, 1))


SDE_RUNS = ("reverse_sde", "predictor_corrector")
IMAGE_RUNS = {
    # In 64-D, DDIM's 50 uniform steps leave 0.005 (100 steps: 0.0018); the DDIM paper's
    # quadratic spacing, denser near t = 0, is at noise level with 50.
    "ddim": lambda k, m, shape: samplers.ddim(k, m.eps, shape, grid="quadratic"),
    **{name: RUNS[name] for name in ("reverse_sde", "predictor_corrector", "ode", "dpm_solver")},
}


# The 1000-step SDE loops on 4000 images are run-time bound: 25 s unoptimised, 8-10 s optimised.
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.optimized) if n in SDE_RUNS else n for n in IMAGE_RUNS],
)
def test_energy_distance_images(name, mix_images):
    """The samplers on `[B, 8, 8, 1]` images of a 64-dimensional mixture."""
    x, _ = IMAGE_RUNS[name](jax.random.key(0), mix_images, (N, 8, 8, 1))
    assert x.shape == (N, 8, 8, 1)
    ref = mix_images.gmm.sample(jax.random.key(1), N)
    assert_matches_mixture(x.reshape(N, 64), mix_images.gmm, ref)


def test_error_falls_with_steps_and_dpm_beats_ddim(mix2d, ref2d):
    key, shape = jax.random.key(0), (N, 2)
    ddim = {n: samplers.ddim(key, mix2d.eps, shape, num_steps=n)[0] for n in (5, 10, 20)}
    dpm = {n: samplers.dpm_solver(key, mix2d.eps_vp, shape, num_steps=n)[0] for n in (4, 5, 10, 20)}
    ed_ddim = {n: float(energy_distance(x, ref2d)) for n, x in ddim.items()}
    ed_dpm = {n: float(energy_distance(x, ref2d)) for n, x in dpm.items()}
    for ed in (ed_ddim, ed_dpm):
        assert ed[5] > 3 * TOL  # far from the data at 5 steps
        assert ed[10] < ed[5] / 5
        assert ed[20] < TOL
    # DPM-Solver++(2M) with 4 steps uses 5 evaluations (one to denoise), like DDIM with 5.
    assert ed_dpm[4] < ed_ddim[5]


@pytest.mark.parametrize(
    ("process", "steps", "t_max"),
    [(dj.VPSDE.from_ddpm(1000), (16, 32), 1.0), (dj.RectifiedFlow(), (32, 64), 80 / 81)],
    ids=["vp", "rf"],
)
def test_dpm_solver_converges_at_its_order(process, steps, t_max):
    """Pathwise error against a tight PF-ODE solve from the same `x_T` at the same start (RF's
    default: EDM noise level 80, `t = 80/81`), on a single Gaussian (RF's log-SNR range is 11
    units against VP's 9: its asymptotic regime starts later)."""
    g = dj.gaussian(jnp.array([1.0, -0.5]), 0.5)
    key, shape = jax.random.key(3), (256, 2)
    tight = dfx.PIDController(rtol=1e-7, atol=1e-7)
    exact, _ = samplers.probability_flow(
        key, dj.exact_model(g, process, "score"), shape, stepsize_controller=tight, t_max=t_max
    )
    eps = dj.exact_model(g, process, "eps")
    errs = {}
    for order in (1, 2):
        errs[order] = [
            float(jnp.max(jnp.abs(samplers.dpm_solver(key, eps, shape, num_steps=n, order=order, t_max=t_max)[0] - exact)))
            for n in steps
        ]
    rate = {o: np.log2(e[0] / e[1]) for o, e in errs.items()}
    assert 0.7 < rate[1] < 1.4, errs
    assert 1.5 < rate[2] < 2.6, errs
    assert errs[2][1] < errs[1][1] / 5


@pytest.fixture(scope="module")
def gaussian_weak():
    """`N(1, 0.5^2 I)` in 4-D; the exact second moment after the denoising step at `t_eps`."""
    vp = dj.VPSDE.from_ddpm(1000)
    dim, mu, s0 = 4, 1.0, 0.5
    g = dj.gaussian(jnp.full((dim,), mu), s0)
    a, s = vp.marginal(jnp.asarray(1e-3))
    exact = dim * (mu**2 + a**2 * s0**4 / (a**2 * s0**2 + s**2))
    return SimpleNamespace(score=dj.exact_model(g, vp, "score"), exact=float(exact))


def _second_moment_error(p, n, solver=None, batch=50_000):
    x, _ = samplers.reverse_sde(
        jax.random.key(n), p.score, (batch, 4), num_steps=n, grid="time", solver=solver
    )
    return float(jnp.mean(jnp.sum(x**2, axis=-1))) / p.exact - 1.0


def test_reverse_sde_weak_first_order(gaussian_weak):
    """Euler-Maruyama's weak error in `E|x|^2` falls as `1/N` (Monte Carlo noise ~0.3%)."""
    steps = np.array([16, 32, 64])
    errs = np.array([_second_moment_error(gaussian_weak, n) for n in steps])
    slope = np.polyfit(np.log(steps), np.log(np.abs(errs)), 1)[0]
    assert -1.35 < slope < -0.7, errs
    # ShARK (additive-noise stochastic Runge-Kutta, space-time Levy area) is far more accurate.
    assert abs(_second_moment_error(gaussian_weak, 16, dfx.ShARK())) < abs(errs[0]) / 3


@pytest.mark.optimized
def test_reverse_sde_adaptive(mix2d, ref2d):
    controller = dfx.PIDController(rtol=1e-2, atol=1e-2, dtmin=1e-5)
    x, info = samplers.reverse_sde(jax.random.key(0), mix2d.score, (N, 2), stepsize_controller=controller)
    assert float(energy_distance(x, ref2d)) < TOL
    assert int(info.nfe) == 2 * int(info.num_steps) + 1  # ShARK: two drift stages


def test_encode_decode_round_trip(mix2d, ref2d):
    x = ref2d[:256]
    tight = dfx.PIDController(rtol=1e-6, atol=1e-6)
    z, info_z = samplers.encode(mix2d.score, x, stepsize_controller=tight)
    back, _ = samplers.decode(mix2d.score, z, stepsize_controller=tight)
    assert float(jnp.max(jnp.abs(back - x))) < 1e-3
    # The latents are close to the N(0, I) prior.
    assert abs(float(jnp.std(z)) - 1.0) < 0.15
    assert int(info_z.nfe) > 0


@pytest.mark.parametrize(
    "sampler",
    [
        lambda k, m: samplers.ddim(k, m, (64, 2), num_steps=10, eta=0.5),
        lambda k, m: samplers.dpm_solver(k, m, (64, 2), num_steps=10),
        lambda k, m: samplers.unipc(k, m, (64, 2), num_steps=10, order=3),
        lambda k, m: samplers.heun(k, m, (64, 2), num_steps=6, churn=1.0),
        lambda k, m: samplers.predictor_corrector(k, m, (64, 2), num_steps=20),
        lambda k, m: samplers.reverse_sde(k, m, (64, 2), num_steps=20),
        lambda k, m: samplers.ode(k, m, (64, 2), num_steps=10),
    ],
    ids=["ddim", "dpm_solver", "unipc", "heun", "predictor_corrector", "reverse_sde", "ode"],
)
def test_samples_are_reverse_differentiable_in_the_model(sampler):
    """`jax.grad` through a sampler's loop matches a central difference (same key). On data
    `N(mu, 0.5^2 I)` with the exact model, `y = x - alpha_t mu` evolves independently of `mu`
    (its drift has no `mu` in it), so `x_0 = mu + y_0` with `y_T = x_T - alpha_T mu`:
    `d mean(x_0) / d mu = 1 - O(alpha_T)` (`alpha_T < 0.007`) for the exact flow, and the
    samplers' own discretisation error on top (the reverse-diffusion predictor's `(1 - A)^2`
    per step is 4.4% at 20 steps; the others are within 1%). Fixed-step `reverse_sde` and `ode`
    are one `lax.scan` of diffrax's `solver.step` (`reverse_sde`'s `diffeqsolve` had a
    forward-mode adjoint: no reverse mode)."""

    def mean_sample(mu):
        gauss = dj.GaussianMixture(jnp.ones(1), jnp.full((1, 2), mu), jnp.full(1, 0.5))
        return jnp.mean(sampler(jax.random.key(3), dj.exact_model(gauss, dj.VPSDE(), "eps"))[0])

    grad = float(jax.grad(mean_sample)(0.3))
    central = float(mean_sample(0.35) - mean_sample(0.25)) / 0.1
    assert abs(grad - central) < 1e-3, (grad, central)
    assert abs(grad - 1.0) < 0.05, grad
