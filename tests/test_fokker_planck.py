"""The 1-D Fokker–Planck solver against closed-form marginals, Langevin stationarity and samplers.

One cell-centred grid (480 cells of width h = 0.025 on [-6, 6]) and one time grid per process
keep the number of compilations small.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import diffjax as dj
from diffjax import fokker_planck as fp
from diffjax import samplers

N_CELLS, HALF_WIDTH = 480, 6.0
H = 2 * HALF_WIDTH / N_CELLS
GRID = jnp.asarray(-HALF_WIDTH + H * (np.arange(N_CELLS) + 0.5), jnp.float32)
TS = jnp.array([0.0, 0.1, 0.3, 0.6, 1.0])

GAUSS = dj.gaussian(jnp.array([1.5]), 0.3)
MIXTURE = dj.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.5], [1.0]]), jnp.array([0.4, 0.6])
)


def density(dist, process=None, t=0.0):
    """Exact density at the cell centres, `[N]`."""
    return jnp.exp(dist.log_prob(GRID[:, None], process, t))


def l1(p, q):
    """`int |p - q| dx` per row by the midpoint rule."""
    return H * jnp.sum(jnp.abs(p - q), axis=-1)


@pytest.fixture(scope="module")
def vp_mixture():
    """FP solution of the VP SDE from the mixture, shared by the marginal and sampler tests."""
    sde = dj.VPSDE()
    return sde, fp.solve_sde_1d(sde, density(MIXTURE), GRID, TS)


@pytest.mark.parametrize(
    "sde, ts",
    [(dj.VPSDE(), TS), (dj.SubVPSDE(), TS), (dj.VESDE(), 0.5 * TS)],
    ids=["vp", "subvp", "ve"],
)
def test_gaussian_marginals_and_mass(sde, ts):
    """From N(1.5, 0.3^2), p_t must be N(a 1.5, a^2 0.09 + s^2); h sum p is conserved."""
    p = fp.solve_sde_1d(sde, density(GAUSS), GRID, ts)
    assert p.shape == (ts.shape[0], N_CELLS)
    exact = jnp.stack([density(GAUSS, sde, t) for t in ts])
    np.testing.assert_allclose(p[0], exact[0])  # the solve starts at ts[0] with p0
    assert float(jnp.max(l1(p, exact))) < 2e-3  # measured <= 1.2e-3 (sub-VP, t = 0.1)
    mass = H * jnp.sum(p, axis=1)
    np.testing.assert_allclose(mass, mass[0], rtol=2e-6)  # measured <= 5.4e-7 in float32
    assert float(jnp.min(p)) > -1e-6


def test_mixture_marginals(vp_mixture):
    """From a two-component mixture, p_t must be the exact noised mixture at every t."""
    sde, p = vp_mixture
    exact = jnp.stack([density(MIXTURE, sde, t) for t in TS])
    assert float(jnp.max(l1(p, exact))) < 5e-4  # measured 4.7e-5
    mass = H * jnp.sum(p, axis=1)
    np.testing.assert_allclose(mass, mass[0], rtol=2e-6)


LANGEVIN_TARGET = dj.GaussianMixture(
    jnp.array([0.3, 0.7]), jnp.array([[-1.0], [1.0]]), jnp.array([0.6, 0.6])
)


def _half_score(x, t):
    """Langevin drift `f = 1/2 d/dx log p(x)` of the fixed target p (independent of t)."""
    return 0.5 * LANGEVIN_TARGET.score(x[:, None])[:, 0]


def _unit(t):
    return jnp.ones(())


def test_langevin_leaves_target_stationary_and_attracts():
    """Notes, topic 4: `dx = 1/2 (log p)' dt + dW` has p as its stationary density."""
    target = density(LANGEVIN_TARGET)
    ts = jnp.array([0.0, 0.5, 1.0, 2.0, 4.0, 6.0])
    stay = fp.solve_1d(_half_score, _unit, target, GRID, ts)
    assert float(jnp.max(jnp.abs(stay - target))) < 5e-4  # measured max |p| is 0.47
    start = density(dj.gaussian(jnp.array([2.0]), 0.5))
    move = fp.solve_1d(_half_score, _unit, start, GRID, ts)
    dist = np.asarray(l1(move, target))
    assert dist[0] > 1.0
    assert np.all(np.diff(dist) <= 1e-5)  # the FP semigroup is an L1 contraction
    # all the mass starts in the right-hand mode; the left one fills slowly (measured 1.42 -> 0.13)
    assert dist[-1] < 0.1 * dist[0]


@pytest.mark.parametrize(
    "sampler", [pytest.param("reverse_sde", marks=pytest.mark.optimized), "ode"]
)
def test_sampler_histograms_match_fokker_planck(vp_mixture, sampler):
    """The reverse SDE and the PF-ODE (exact score) visit the forward marginals p_t.

    20000 samples at t = 0.3 and 0.6 in 40 bins of width 0.15 on [-3, 3] (the outer bins absorb
    the tails; every expected count is >= 20), against the FP density integrated over each bin;
    Pearson's chi-square with 39 degrees of freedom must not reject at level 1e-3. Measured
    p-values 0.22-0.75 (TV 0.016); against the FP density at the other saved time chi-square
    is 900-1150 (TV 0.09).
    """
    sde, p = vp_mixture
    model = dj.exact_model(MIXTURE, sde, "score")
    num, num_bins, lo, cells_per_bin = 20000, 40, -3.0, 6
    first = int(round((lo + HALF_WIDTH) / H))  # cells left of the first bin edge
    last = first + num_bins * cells_per_bin
    fn = samplers.reverse_sde if sampler == "reverse_sde" else samplers.ode
    _, info = fn(jax.random.key(0), model, (num, 1), save_times=np.array([0.3, 0.6]))
    for t, x in zip(np.asarray(info.times), np.asarray(info.trajectory[..., 0]), strict=True):
        row = int(np.argmin(np.abs(np.asarray(TS) - t)))
        assert abs(float(TS[row]) - t) < 1e-6
        cell_mass = H * np.asarray(p[row], np.float64)
        probs = cell_mass[first:last].reshape(num_bins, cells_per_bin).sum(1)
        probs[0] += cell_mass[:first].sum()
        probs[-1] += cell_mass[last:].sum()
        probs /= probs.sum()
        idx = np.clip(np.floor((x - lo) / (cells_per_bin * H)).astype(int), 0, num_bins - 1)
        counts = np.bincount(idx, minlength=num_bins)
        assert np.min(num * probs) >= 20  # measured 24: the chi-square law applies
        chi2 = float(np.sum((counts - num * probs) ** 2 / (num * probs)))
        assert stats.chi2.sf(chi2, df=num_bins - 1) > 1e-3, (t, chi2)


def test_bad_inputs():
    p0 = density(GAUSS)
    sde = dj.VPSDE()
    with pytest.raises(ValueError, match=r"[`']grid[`']"):
        fp.solve_sde_1d(sde, p0, GRID.at[10].add(0.01), TS)
    with pytest.raises(ValueError, match=r"[`']grid[`']"):
        fp.solve_sde_1d(sde, p0, GRID[::-1], TS)
    with pytest.raises(ValueError, match="`p0`"):
        fp.solve_sde_1d(sde, p0[:-1], GRID, TS)
    with pytest.raises(ValueError, match="`p0`"):
        fp.solve_sde_1d(sde, p0.at[3].set(-1.0), GRID, TS)
    with pytest.raises(ValueError, match=r"[`']ts[`']"):
        fp.solve_sde_1d(sde, p0, GRID, jnp.array([0.0, 0.5, 0.3]))
    with pytest.raises(ValueError, match=r"[`']ts[`']"):
        fp.solve_sde_1d(sde, p0, GRID, jnp.array([0.0, 2.0]))  # beyond T = 1
    with pytest.raises(TypeError, match=r"[`']drift[`']"):
        fp.solve_1d(1.0, _unit, p0, GRID, TS)
    with pytest.raises(TypeError, match=r"[`']diffusion[`']"):
        fp.solve_1d(_half_score, "g", p0, GRID, TS)
    with pytest.raises(ValueError, match="`drift"):
        fp.solve_1d(lambda x, t: x[:3], _unit, p0, GRID, TS)
    with pytest.raises(ValueError, match="`diffusion"):
        fp.solve_1d(_half_score, lambda t: jnp.ones(2), p0, GRID, TS)
    with pytest.raises(TypeError, match=r"[`']sde[`']"):
        fp.solve_sde_1d(dj.schedules.linear(10), p0, GRID, TS)
