"""Every sampler on every process with the exact 8-Gaussian model, and the conformance suite
(shape, dtype, jit, vmap over keys, same key, no retrace, traced knobs, named errors).

Split from test_samplers.py so that the two halves run on different test workers.
"""

from __future__ import annotations

from types import SimpleNamespace

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import CONTINUOUS_PROCESSES, assert_matches_mixture
from test_samplers import _eight_gaussians, _problem

import diffjax as dj
from diffjax import samplers

N = 2000  # per-mode std s.e. ~1.6% (250 samples a mode in 2-D); energy-distance noise ~0.002


@pytest.fixture(scope="module")
def mix2d():
    return _problem(_eight_gaussians())


@pytest.fixture(scope="module")
def ref2d(mix2d):
    return mix2d.gmm.sample(jax.random.key(1), N)


# ---------------------------------------------------------------- every sampler on every process
PROCESSES = CONTINUOUS_PROCESSES
# Natural step counts; the model kind cycles so that every kind meets every sampler.
GRID_RUNS = {
    "ddim": lambda k, m: samplers.ddim(k, m, (N, 2), num_steps=200),
    "dpm_solver": lambda k, m: samplers.dpm_solver(k, m, (N, 2), num_steps=30),
    "reverse_sde": lambda k, m: samplers.reverse_sde(k, m, (N, 2), num_steps=1000),
    "predictor_corrector": lambda k, m: samplers.predictor_corrector(k, m, (N, 2)),
    "probability_flow": lambda k, m: samplers.probability_flow(k, m, (N, 2)),
}
KINDS = ("eps", "velocity", "x0", "v", "score")
# 500-1000 steps on 2000 samples: run-time bound, faster with XLA's optimisations (2026-12-03, one
# thread: PC 17.0 -> 13.5 s and reverse SDE 22.2 -> 20.8 s over the six paths; the others are
# compile-bound, slower optimised).
RUN_BOUND = ("reverse_sde", "predictor_corrector")


@pytest.mark.slow
@pytest.mark.parametrize("process_name", list(PROCESSES))
@pytest.mark.parametrize(
    "sampler",
    [pytest.param(s, marks=pytest.mark.optimized) if s in RUN_BOUND else s for s in GRID_RUNS],
)
def test_every_sampler_on_every_process(sampler, process_name, mix2d, ref2d):
    """Each (sampler x process) cell with the exact 8-Gaussian model: energy distance at the
    noise floor (2000 samples) and mean per-mode std within 5% (each mode within 20%, about
    4.5 standard errors at 250 samples a mode). The energy distance is at the floor from 20 steps
    (DPM-Solver++) and 50 (DDIM), but the modes are then 5-7% (DDIM: 7-12%) too wide on the paths
    with a wide log-SNR range (sub-VP, RF, cosine: 14-16 units against VP's 9): 30 and 200 steps
    bring every cell within 5%."""
    i = list(GRID_RUNS).index(sampler) + list(PROCESSES).index(process_name)
    model = dj.exact_model(mix2d.gmm, PROCESSES[process_name], KINDS[i % len(KINDS)])
    x, info = GRID_RUNS[sampler](jax.random.key(0), model)
    assert_matches_mixture(x, mix2d.gmm, ref2d, tol=0.005, mode_tol=0.2)
    assert bool(jnp.all(jnp.isfinite(x)))


# ---------------------------------------------------------------- conformance
SMALL = {
    "ddpm": lambda k, m, **kw: samplers.ddpm(k, m.eps, (16, 2), **kw),
    "ddim": lambda k, m, **kw: samplers.ddim(k, m.eps, (16, 2), num_steps=10, **{"eta": 0.5, **kw}),
    "ddim_continuous": lambda k, m, **kw: samplers.ddim(
        k, m.eps_vp, (16, 2), num_steps=10, **{"eta": 0.5, **kw}
    ),
    "reverse_sde": lambda k, m, **kw: samplers.reverse_sde(k, m.score, (16, 2), num_steps=20, **kw),
    "predictor_corrector": lambda k, m, **kw: samplers.predictor_corrector(
        k, m.score, (16, 2), num_steps=20, **kw
    ),
    "probability_flow": lambda k, m, **kw: samplers.probability_flow(
        k, m.score, (16, 2), num_steps=20, **kw
    ),
    "dpm_solver": lambda k, m, **kw: samplers.dpm_solver(k, m.eps_vp, (16, 2), num_steps=6, **kw),
}
# A numeric knob of each sampler that must not recompile when it changes.
KNOBS = {
    "ddim": {"eta": 0.3},
    "ddim_continuous": {"eta": 0.3},
    "reverse_sde": {"t_eps": 2e-3},
    "predictor_corrector": {"snr": 0.2},
    "probability_flow": {"t_eps": 2e-3},
    "dpm_solver": {"t_eps": 2e-3},
}


@pytest.mark.parametrize("name", list(SMALL))
def test_conformance(name, mix2d):
    """Shape and dtype, same key same samples, `vmap` over keys equals separate calls, the
    whole call under `jit`, and no retrace when only a numeric knob changes."""
    run = SMALL[name]
    keys = jax.random.split(jax.random.key(7), 2)
    single = [run(k, mix2d)[0] for k in keys]
    assert single[0].shape == (16, 2) and single[0].dtype == jnp.float32
    np.testing.assert_array_equal(run(keys[0], mix2d)[0], single[0])
    assert not np.allclose(single[0], single[1])
    batched = jax.vmap(lambda k: run(k, mix2d)[0])(keys)
    for j in range(2):
        np.testing.assert_allclose(batched[j], single[j], rtol=1e-5, atol=1e-5)
    jitted = jax.jit(lambda k: run(k, mix2d)[0])(keys[0])
    np.testing.assert_allclose(jitted, single[0], rtol=1e-5, atol=1e-5)
    if name in KNOBS:
        traces = []
        base = getattr(mix2d, MODEL_OF[name])
        counted = dj.Model(_Counting(base, traces), base.process, base.prediction)
        problem = SimpleNamespace(**{**vars(mix2d), MODEL_OF[name]: counted})
        run(keys[0], problem)
        first = len(traces)
        x1 = run(keys[0], problem, **KNOBS[name])[0]
        second = len(traces) - first
        run(keys[0], problem, **{k: 2 * v for k, v in KNOBS[name].items()})
        third = len(traces) - first - second
        # The model's output check is cached (by structure and types): a call with only a new
        # knob value traces the model neither in the check nor in the solve.
        assert second == third == 0 < first, (first, second, third)
        assert not np.allclose(x1, single[0])


MODEL_OF = {
    "ddim": "eps",
    "ddim_continuous": "eps_vp",
    "dpm_solver": "eps_vp",
    "reverse_sde": "score",
    "predictor_corrector": "score",
    "probability_flow": "score",
}


class _Counting(eqx.Module):
    """A model function recording every trace of its body (hashed as one static function)."""

    model: dj.Model
    traces: list = eqx.field(static=True)

    def __call__(self, x, t):
        self.traces.append(1)
        return self.model(x, t)


def test_traced_knobs_under_vmap(mix2d):
    """`eta` and `snr` may be traced: `vmap` over them equals separate calls."""
    key = jax.random.key(3)
    etas = jnp.array([0.0, 0.5, 1.0])
    batched = jax.vmap(lambda e: samplers.ddim(key, mix2d.eps_vp, (16, 2), num_steps=10, eta=e)[0])(etas)
    for j, e in enumerate([0.0, 0.5, 1.0]):
        single = samplers.ddim(key, mix2d.eps_vp, (16, 2), num_steps=10, eta=e)[0]
        np.testing.assert_allclose(batched[j], single, rtol=1e-5, atol=1e-5)
    snrs = jnp.array([0.1, 0.2])
    batched = jax.vmap(
        lambda r: samplers.predictor_corrector(key, mix2d.score, (16, 2), num_steps=10, snr=r)[0]
    )(snrs)
    for j, r in enumerate([0.1, 0.2]):
        single = samplers.predictor_corrector(key, mix2d.score, (16, 2), num_steps=10, snr=r)[0]
        np.testing.assert_allclose(batched[j], single, rtol=1e-5, atol=1e-5)


def test_legacy_keys_and_jit(mix2d):
    run = SMALL["ddim"]
    x = jax.jit(lambda k: run(k, mix2d)[0])(jax.random.PRNGKey(0))
    np.testing.assert_allclose(x, run(jax.random.PRNGKey(0), mix2d)[0], rtol=1e-5, atol=1e-5)


def test_reverse_sde_gives_the_same_samples_again_and_inside_jit(mix2d):
    """The reverse SDE's Brownian increments are keyed on the step times: a grid one ulp off
    gives other samples. The grid of a public call is computed once and kept (the second call
    reads it back), and an outer `jit` with concrete times uses that same grid."""
    key, run = jax.random.key(3), SMALL["reverse_sde"]
    first = run(key, mix2d)[0]
    np.testing.assert_array_equal(run(key, mix2d)[0], first)
    np.testing.assert_allclose(jax.jit(lambda k: run(k, mix2d)[0])(key), first, rtol=1e-5, atol=1e-5)
    other = run(key, mix2d, t_eps=2e-3)[0]  # another grid: other increments
    assert float(jnp.max(jnp.abs(other - first))) > 1e-2


def _bad_fn(x, t):
    return x[:, :1]


def _key():
    return jax.random.key(0)


BAD = [
    (lambda m: samplers.ddim(_key(), m.eps, (8, 2), eta=1.5), ValueError, "eta"),
    (lambda m: samplers.ddim(_key(), m.eps, (8, 2), grid="log"), ValueError, "grid"),
    (lambda m: samplers.ddim(_key(), m.eps, (8, 2), num_steps=0), ValueError, "num_steps"),
    (lambda m: samplers.ddim(_key(), m.eps, (8, 2), num_steps=2000), ValueError, "num_steps"),
    (lambda m: samplers.ddpm(_key(), m.eps, (8, 2), variance="big"), ValueError, "variance"),
    (lambda m: samplers.ddpm(_key(), dj.Model(_bad_fn, m.sch, "eps"), (8, 2)), ValueError, "model"),
    (lambda m: samplers.ddpm(0, m.eps, (8, 2)), TypeError, "key"),
    (lambda m: samplers.ddpm(_key(), m.eps_vp, (8, 2)), TypeError, "DiscreteSchedule"),
    (lambda m: samplers.ddpm(_key(), m.eps, (2,)), ValueError, "shape"),
    (lambda m: samplers.ddpm(_key(), m.eps, (8, 2), save_times=[2000]), ValueError, "save_times"),
    (lambda m: samplers.reverse_sde(_key(), m.score, (8, 2), t_eps=0.0), ValueError, "t_eps"),
    (lambda m: samplers.reverse_sde(_key(), m.score, (8, 2), t_eps=1.5), ValueError, "t_eps"),
    (lambda m: samplers.reverse_sde(_key(), m.score, (8, 2), num_steps=-3), ValueError, "num_steps"),
    (
        lambda m: samplers.reverse_sde(_key(), dj.Model(_bad_fn, m.vp, "score"), (8, 2)),
        ValueError,
        "model",
    ),
    (lambda m: samplers.reverse_sde(_key(), m.score, (8, 2), save_times=[0.0]), ValueError, "save_times"),
    (
        lambda m: samplers.predictor_corrector(_key(), m.score, (8, 2), predictor="ald"),
        ValueError,
        "predictor",
    ),
    (lambda m: samplers.predictor_corrector(_key(), m.score, (8, 2), snr=-1.0), ValueError, "snr"),
    (
        lambda m: samplers.predictor_corrector(_key(), m.score, (8, 2), corrector_steps=-1),
        ValueError,
        "corrector_steps",
    ),
    (
        lambda m: samplers.probability_flow(_key(), m.score, (8, 2), stepsize_controller="tight"),
        TypeError,
        "stepsize_controller",
    ),
    (
        lambda m: samplers.probability_flow(
            _key(), m.score, (8, 2), solver=dfx.Euler(), stepsize_controller=dfx.PIDController(rtol=1e-3, atol=1e-3)
        ),
        ValueError,
        "solver",
    ),
    (lambda m: samplers.probability_flow(_key(), m.eps, (8, 2)), TypeError, "continuous"),
    (lambda m: samplers.decode(m.score, jnp.zeros((8, 3))), ValueError, "model"),
    (lambda m: samplers.dpm_solver(_key(), m.eps_vp, (8, 2), order=4), ValueError, "order"),
    (lambda m: samplers.dpm_solver(_key(), m.eps_vp, (8, 2), order=2.0), TypeError, "order"),
    (lambda m: samplers.dpm_solver(_key(), m.eps_vp, (8, 2), grid="cubic"), ValueError, "grid"),
    (lambda m: samplers.dpm_solver(_key(), m.eps_vp, (8, 2), num_steps=20.0), TypeError, "num_steps"),
    # A plain function is not a model: its prediction kind would be a guess.
    (lambda m: samplers.dpm_solver(_key(), lambda x, t: x, (8, 2)), TypeError, "model"),
    (lambda m: samplers.dpm_solver(_key(), m.eps_vp, (8, 2), process="edm"), TypeError, "process"),
    (
        lambda m: samplers.dpm_solver(_key(), dj.Model(lambda x, t: x + 1j, m.vp, "eps"), (8, 2)),
        TypeError,
        "real",
    ),
    (
        lambda m: samplers.reverse_sde(
            _key(), m.score, (8, 2), stepsize_controller=dfx.PIDController(rtol=1e-6, atol=1e-6), max_steps=3
        ),
        RuntimeError,
        "max_steps",
    ),
]


@pytest.mark.parametrize("call, error, match", BAD)
def test_bad_input_is_named(call, error, match, mix2d):
    with pytest.raises(error, match=match):
        call(mix2d)
