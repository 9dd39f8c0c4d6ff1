"""UniPC and SDE-DPM-Solver++ (`samplers.multistep`) against exact references (no training).

Distributions: the exact 8-Gaussian models (`dj.exact_model`), 2000 samples against 2000 true
ones (energy-distance noise about 0.002, per-mode std s.e. about 1.6%, 0.6% for their mean).
Orders: pathwise errors on a single Gaussian against a fine solve from the same `x_T`.
Every key is fixed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_matches_mixture
from test_sampler_grid import _Counting
from test_samplers import _eight_gaussians, _problem

import diffjax as dj
from diffjax import samplers
from diffjax.metrics import energy_distance
from diffjax.samplers import multistep

N = 2000


@pytest.fixture(scope="module")
def mix2d():
    return _problem(_eight_gaussians())


@pytest.fixture(scope="module")
def ref2d(mix2d):
    return mix2d.gmm.sample(jax.random.key(1), N)


# ---------------------------------------------------------------- distributions
# (process, model kind, order, variant, steps). Measured (key 0; the same to 3 digits for every
# kind): the energy distance is at the floor (<= 0) in every cell from 20 steps; the mean
# per-mode std is what needs the steps. VP, 10 / 20 / 30 steps: order 1 bh1 +16.5 / +6.2 / +3.6%,
# order 3 bh2 +55 / +5.6 / +1.9% (DPM-Solver++ 2M: +9.0 / +3.7 / +2.6%). RF (log-SNR range 16
# units against VP's 9), 20 / 30 / 50 steps: order 2 bh1 +3.4 / +6.3 / +3.2%, bh2 +6.3 / +6.6 /
# +3.4% (2M: +7.0 / +4.8 / +3.3%). At 10 steps only VP order 2 is within 5% (bh2 +1.0%, bh1
# -6.6%), and on RF orders 2-3 are far off (order 2 bh1: energy distance 0.33; 2M: 0.044).
UNIPC_CELLS = {
    "vp-1-bh1": ("vp", "eps", 1, "bh1", 30),
    "vp-3-bh2": ("vp", "x0", 3, "bh2", 30),
    "rf-2-bh1": ("rf", "velocity", 2, "bh1", 50),
    "rf-2-bh2": ("rf", "score", 2, "bh2", 50),
}
PROCESSES = {"vp": dj.VPSDE(), "rf": dj.RectifiedFlow(), "edm": dj.EDM()}


@pytest.mark.parametrize("cell", list(UNIPC_CELLS))
def test_unipc_matches_mixture(cell, mix2d, ref2d):
    """Energy distance <= 0.005 and mean per-mode std within 5% (each mode within 20%); the
    saved state at `t = 0.5` follows the exact marginal `p_t`."""
    process_name, kind, order, variant, steps = UNIPC_CELLS[cell]
    process = PROCESSES[process_name]
    model = dj.exact_model(mix2d.gmm, process, kind)
    x, info = samplers.unipc(
        jax.random.key(0), model, (N, 2), num_steps=steps, order=order, variant=variant,
        save_times=[0.5],
    )  # fmt: skip
    assert_matches_mixture(x, mix2d.gmm, ref2d, tol=0.005, mode_tol=0.2)
    assert int(info.nfe) == steps + 1 and int(info.num_steps) == steps
    assert bool(info.finite)
    (x_t,), (t,) = info.trajectory, info.times
    exact = mix2d.gmm.noised(process, t).sample(jax.random.key(10), N)
    assert float(energy_distance(x_t, exact)) < 0.005


@pytest.mark.parametrize("process_name", ["vp", "edm"])
def test_sde_dpm_solver_2m_matches_mixture(process_name, mix2d, ref2d):
    """SDE-DPM-Solver++(2M), 50 steps. Measured (key 0): energy distance -0.0017 (VP) and
    -0.0020 (EDM), mean per-mode std +1.0% and +1.6%; the same key gives the same samples and
    another key others. (1M at 50 steps is 7% narrow: 2M is the one to use.)"""
    model = dj.exact_model(mix2d.gmm, PROCESSES[process_name], "eps")

    def run(key):
        return samplers.dpm_solver(key, model, (N, 2), num_steps=50, stochastic=True)

    x, info = run(jax.random.key(0))
    assert_matches_mixture(x, mix2d.gmm, ref2d, tol=0.005, mode_tol=0.2)
    assert int(info.nfe) == 51
    np.testing.assert_array_equal(run(jax.random.key(0))[0], x)
    assert not np.allclose(run(jax.random.key(1))[0], x)


def test_sde_dpm_solver_1m_is_ddim_with_eta_one(mix2d):
    """SDE-DPM-Solver++(1M) is DDIM with `eta = 1` (the DDPM posterior on the same grid): with
    the same key, the same prior draw and the same noise, the same samples."""
    key, shape = jax.random.key(4), (16, 2)
    sde, _ = samplers.dpm_solver(key, mix2d.eps_vp, shape, num_steps=10, order=1, stochastic=True)
    ddim, _ = samplers.ddim(key, mix2d.eps_vp, shape, num_steps=10, eta=1.0)
    np.testing.assert_allclose(sde, ddim, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- orders
STEPS = (8, 16, 32)
UNIPC_ORDERS = {1: "bh1", 2: "bh2", 3: "bh2"}


@pytest.fixture(scope="module")
def paths():
    """Final samples from one `x_T` (key 3, 256 samples) of `N(mu, 0.5^2 I)` on the DDPM VP SDE:
    DPM-Solver++(3M) with 1000 steps (1.6e-6 RMS from a diffrax Tsit5 solve of the PF-ODE at
    rtol = atol = 1e-7, against the smallest error below, 6e-5), and the solvers at `STEPS`
    without the final-order rule. The 8-Gaussian mixture's narrow modes keep these step counts
    pre-asymptotic (its fitted UniPC slopes: -1.39, -1.96, -2.83 for orders 1, 2, 3); a single
    Gaussian does not."""
    g = dj.gaussian(jnp.array([1.0, -0.5]), 0.5)
    model = dj.exact_model(g, dj.VPSDE.from_ddpm(1000), "eps")
    key, shape = jax.random.key(3), (256, 2)
    kw = {"lower_order_final": False}
    out = {"fine": samplers.dpm_solver(key, model, shape, num_steps=1000, order=3)[0]}
    for n in STEPS:
        for p, variant in UNIPC_ORDERS.items():
            out["unipc", p, n] = samplers.unipc(
                key, model, shape, num_steps=n, order=p, variant=variant, **kw
            )[0]
        for p in (2, 3):
            out["dpm", p, n] = samplers.dpm_solver(key, model, shape, num_steps=n, order=p, **kw)[0]
    for variant in ("bh1", "bh2"):
        out[variant, 1, 10] = samplers.unipc(
            key, model, shape, num_steps=10, order=1, variant=variant
        )[0]
    out["dpm", 1, 10] = samplers.dpm_solver(key, model, shape, num_steps=10, order=1)[0]
    return out


def _rms(a, b) -> float:
    return float(jnp.sqrt(jnp.mean((a - b) ** 2)))


def _slope(errors) -> float:
    return float(np.polyfit(np.log(STEPS), np.log(errors), 1)[0])


# The corrector raises the order by one: UniC-p with UniP-p converges at order p + 1.
# Measured RMS errors at 8 / 16 / 32 steps and fitted slopes: order 1 (bh1) 7.3e-2 / 1.7e-2 /
# 3.7e-3, -2.16 (bh2: -1.77); order 2 (bh2) 3.1e-2 / 7.9e-3 / 1.2e-3, -2.37 (-2.78 from 16 to
# 32; bh1: -3.14); order 3 (bh2) 6.1e-2 / 1.5e-3 / 6.3e-5, -4.97. DPM-Solver++ 2M / 3M on the
# same runs: -1.21 / -2.97.
SLOPE_BOUNDS = {1: -1.7, 2: -2.0, 3: -3.4}


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_converges_at_order_plus_one(order, paths):
    errors = [_rms(paths["unipc", order, n], paths["fine"]) for n in STEPS]
    assert _slope(errors) <= SLOPE_BOUNDS[order], errors
    assert errors[-1] < 1e-2


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_and_dpm_solver_agree_to_their_order(order, paths):
    """`|unipc - dpm_solver|` from one `x_T` falls with the steps, and at 32 steps it is
    DPM-Solver's own error (UniPC is an order more accurate). Measured RMS differences at
    8 / 16 / 32 steps: order 2: 1.5e-2 / 2.4e-3 / 1.8e-3 (DPM-Solver++ 2M's error at 32: 2.9e-3);
    order 3: 1.7e-2 / 5.7e-3 / 1.3e-3 (3M: 1.3e-3). A 4-fold refinement divides them by 8.6
    and 12.7 (`4^p` asymptotically; at 8 steps the two solvers' errors are still correlated)."""
    diffs = [_rms(paths["unipc", order, n], paths["dpm", order, n]) for n in STEPS]
    assert diffs[0] > diffs[1] > diffs[2], diffs
    assert diffs[-1] < diffs[0] / 2**order, diffs
    dpm_error = _rms(paths["dpm", order, STEPS[-1]], paths["fine"])
    assert 0.5 * dpm_error < diffs[-1] < 1.5 * dpm_error, (diffs, dpm_error)


def test_unipc_order_one_beats_ddim_at_ten_steps(paths):
    """UniPC-1 is DDIM (DPM-Solver++ order 1) plus the corrector: at 10 steps (11 evaluations
    each) it is closer to the fine solve. Measured RMS: 4.7e-2 (bh1), 7.4e-2 (bh2) against
    1.15e-1."""
    e_ddim = _rms(paths["dpm", 1, 10], paths["fine"])
    for variant, factor in (("bh1", 0.5), ("bh2", 0.75)):
        e_unipc = _rms(paths[variant, 1, 10], paths["fine"])
        assert e_unipc < factor * e_ddim, (variant, e_unipc, e_ddim)


def test_unipc_one_step_is_ddim(mix2d):
    """With one step no corrector runs (none after the last step): UniPC is then DDIM, and its
    last evaluation is the denoising step `x0(x_1, t_eps)`."""
    key, shape = jax.random.key(2), (16, 2)
    x, info = samplers.unipc(key, mix2d.eps_vp, shape, num_steps=1, order=3)
    ddim, _ = samplers.dpm_solver(key, mix2d.eps_vp, shape, num_steps=1, order=1)
    np.testing.assert_allclose(x, ddim, rtol=1e-6, atol=1e-6)
    assert int(info.nfe) == 2


# ---------------------------------------------------------------- the final-order rule
def test_order_schedule():
    """Warm-up `min(order, i)`; with `lower_order_final` and fewer than 10 steps also
    `min(., N - i + 1)`, as in DPM-Solver's reference implementation."""
    np.testing.assert_array_equal(multistep._orders(9, 3, True), [1, 2, 3, 3, 3, 3, 3, 2, 1])
    np.testing.assert_array_equal(multistep._orders(9, 3, False), [1, 2] + [3] * 7)
    np.testing.assert_array_equal(multistep._orders(10, 3, True), [1, 2] + [3] * 8)
    np.testing.assert_array_equal(multistep._orders(3, 2, True), [1, 2, 1])


@pytest.mark.parametrize("sampler", ["dpm_solver", "unipc"])
def test_lower_order_final_only_below_ten_steps(sampler, mix2d):
    run = getattr(samplers, sampler)
    key, shape = jax.random.key(5), (16, 2)
    for steps, same in ((10, True), (6, False)):
        on, _ = run(key, mix2d.eps_vp, shape, num_steps=steps, order=3, lower_order_final=True)
        off, _ = run(key, mix2d.eps_vp, shape, num_steps=steps, order=3, lower_order_final=False)
        if same:
            np.testing.assert_array_equal(on, off)
        else:
            assert float(jnp.max(jnp.abs(on - off))) > 1e-4


# ---------------------------------------------------------------- conformance
# 20 stochastic steps: with 6, float32 rounding differences between the batched and single
# programs grow to 6e-5 (float64: 1e-13); with 20 they stay at 2e-6.
SMALL = {
    "unipc": lambda k, m, **kw: samplers.unipc(k, m, (16, 2), num_steps=6, order=3, **kw),
    "sde_dpm_solver": lambda k, m, **kw: samplers.dpm_solver(
        k, m, (16, 2), num_steps=20, stochastic=True, **kw
    ),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_conformance(name, mix2d):
    """As `test_sampler_grid.test_conformance`: shape and dtype, same key same samples, `vmap`
    over keys equals separate calls, the whole call under `jit`, and (UniPC) no retrace when
    `t_eps` changes."""
    run = SMALL[name]
    keys = jax.random.split(jax.random.key(7), 2)
    single = [run(k, mix2d.eps_vp)[0] for k in keys]
    assert single[0].shape == (16, 2) and single[0].dtype == jnp.float32
    np.testing.assert_array_equal(run(keys[0], mix2d.eps_vp)[0], single[0])
    assert not np.allclose(single[0], single[1])
    batched = jax.vmap(lambda k: run(k, mix2d.eps_vp)[0])(keys)
    for j in range(2):
        np.testing.assert_allclose(batched[j], single[j], rtol=1e-5, atol=1e-5)
    jitted = jax.jit(lambda k: run(k, mix2d.eps_vp)[0])(keys[0])
    np.testing.assert_allclose(jitted, single[0], rtol=1e-5, atol=1e-5)
    if name != "unipc":  # the stochastic solver shares dpm_solver's checks (test_sampler_grid)
        return
    traces = []
    base = mix2d.eps_vp
    counted = dj.Model(_Counting(base, traces), base.process, base.prediction)
    run(keys[0], counted)
    first = len(traces)
    x1 = run(keys[0], counted, t_eps=2e-3)[0]
    second = len(traces) - first
    run(keys[0], counted, t_eps=4e-3)
    third = len(traces) - first - second
    assert second == third < first, (first, second, third)  # only the eager shape check
    assert not np.allclose(x1, single[0])


# ---------------------------------------------------------------- bad input
def _key():
    return jax.random.key(0)


BAD = [
    (lambda m: samplers.unipc(_key(), m.eps_vp, (8, 2), variant="bh3"), ValueError, "variant"),
    (lambda m: samplers.unipc(_key(), m.eps_vp, (8, 2), order=4), ValueError, "order"),
    (lambda m: samplers.unipc(_key(), m.eps_vp, (8, 2), order=0), ValueError, "order"),
    (lambda m: samplers.unipc(_key(), m.eps_vp, (8, 2), order=2.0), TypeError, "order"),
    (lambda m: samplers.unipc(_key(), m.eps_vp, (8, 2), num_steps=0), ValueError, "num_steps"),
    (lambda m: samplers.unipc(_key(), m.eps_vp, (8, 2), grid="cubic"), ValueError, "grid"),
    (lambda m: samplers.unipc(_key(), m.eps, (8, 2)), TypeError, "continuous"),
    (lambda m: samplers.unipc(_key(), m.eps_vp, (8, 2), t_eps=0.0), ValueError, "t_eps"),
    (
        lambda m: samplers.dpm_solver(_key(), m.eps_vp, (8, 2), stochastic=True, order=3),
        ValueError,
        "order",
    ),
    (lambda m: samplers.dpm_solver(_key(), m.eps_vp, (8, 2), order=4), ValueError, "order"),
]


@pytest.mark.parametrize("call, error, match", BAD)
def test_bad_input_is_named(call, error, match, mix2d):
    with pytest.raises(error, match=match):
        call(mix2d)
