"""Shared fixtures: exact references used across the test files."""

from __future__ import annotations

import os

# As many xdist workers as cores (`make test`: 2 on 2): one XLA CPU thread each, since two
# multi-threaded pools oversubscribe the cores (test_samplers + test_karras on 2 workers: 6% less
# wall and CPU time). Set before JAX starts its backend; subprocesses inherit it.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) >= (os.cpu_count() or 1):
    flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()

# Tests are dominated by XLA compile time (backend compilation: ~70% of test_karras' wall time)
# on tiny shapes; skipping most optimisations cuts compile CPU by ~20% and the programs stay
# correct. Subprocesses (notebooks, scripts) inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# The scripts and notebooks run as subprocesses must not fill the user's compilation cache. (A
# cache shared by the whole session was measured: test_scripts + test_guidance 312.5 s with it,
# 314.8 s without; few programs repeat across tests.)
os.environ.setdefault("DIFFJAX_COMPILATION_CACHE", "off")

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import optimizations

import diffjax as dj

# The longest files first (CPU seconds of a full run, 2026-12-03), so that pytest-xdist's
# `--dist loadfile`, which hands out whole files in collection order (`make test` passes
# `--no-loadscope-reorder`: by default xdist orders files by their number of tests), ends on short
# files instead of leaving one worker idle while the other runs a notebook file.
LONGEST_FIRST = (
    "test_scripts.py",  # 209 s
    "test_samplers.py",  # 142 s
    "test_sampler_grid.py",  # 138 s
    "test_notebooks_late.py",  # 122 s
    "test_guidance.py",  # 115 s
    "test_notebooks.py",  # 94 s
    "test_likelihood.py",  # 91 s
    "test_nets.py",  # 79 s
    "test_processes.py",  # 76 s
    "test_losses.py",  # 74 s
    "test_multistep.py",  # 56 s
    "test_reliability.py",  # 52 s
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


@pytest.fixture(autouse=True)
def _optimized_when_marked(request):
    """`@pytest.mark.optimized`: XLA's optimisations back on for a test whose run time, not
    its compile time, dominates (long sampler loops on thousands of samples run 2-4x slower
    unoptimised)."""
    if request.node.get_closest_marker("optimized") is None:
        yield
        return
    with optimizations(True):
        yield


def ring_mixture(num_modes: int = 8, radius: float = 2.0, std: float = 0.1) -> dj.GaussianMixture:
    """Equal-weight isotropic Gaussians on a circle in 2-D (the classic eight Gaussians)."""
    angles = 2 * np.pi * np.arange(num_modes) / num_modes
    means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return dj.GaussianMixture(jnp.full(num_modes, 1.0 / num_modes), means, jnp.full(num_modes, std))


@pytest.fixture(scope="session")
def eight_gaussians() -> dj.GaussianMixture:
    return ring_mixture()


@pytest.fixture(scope="session")
def image_mixture() -> dj.GaussianMixture:
    """A three-component diagonal mixture on 4x4x1 images (non-isotropic components)."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(3, 4, 4, 1))
    stds = rng.uniform(0.2, 0.8, size=(3, 4, 4, 1))
    return dj.GaussianMixture(jnp.array([0.2, 0.3, 0.5]), means, stds)
