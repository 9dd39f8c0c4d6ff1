"""Smoke tests of the benchmark code (`benchmarks/`): its references and its timing harness.

No timing is asserted; `make bench` runs the benchmarks themselves.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import config, flow_peer, jax_peers, run
from benchmarks.likelihood import scipy_log_prob
from benchmarks.quality import mode_std_error
from benchmarks.timing import compare
from diffjax import VPSDE
from diffjax.data import eight_gaussians_params
from diffjax.distributions import GaussianMixture, exact_model


def test_mode_std_error_of_true_and_widened_samples():
    weights, means, stds = eight_gaussians_params()
    key = jax.random.key(0)
    exact = GaussianMixture(weights, means, stds).sample(key, 4000)
    wide = GaussianMixture(weights, means, 2.0 * stds).sample(key, 4000)
    # ~500 samples per mode: the relative sd of a std estimate is about 1/sqrt(2*1000) = 2.2%.
    assert mode_std_error(exact, means) < 0.06
    assert abs(mode_std_error(wide, means) - 1.0) < 0.1


def test_scipy_reference_nll_matches_the_exact_density():
    """The host RK45 reference integrates the PF-ODE to `log p_0` up to the prior gap."""
    dist = GaussianMixture(*eight_gaussians_params())
    sde = VPSDE()
    x = dist.sample(jax.random.key(1), 32)
    logp, nfe = scipy_log_prob(exact_model(dist, sde))(x)
    # N(0, I) vs the exact p_T: means shrink to mean_coeff(T) * 2 = 0.013, a gap of ~1e-2 nats.
    np.testing.assert_allclose(logp, np.asarray(dist.log_prob(x)), atol=0.05)
    assert nfe > 0


def test_compare_interleaves_after_one_warm_up_each():
    calls = []
    fns = {name: (lambda name=name: calls.append(name) or jnp.ones(())) for name in "ab"}
    out = compare(fns, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3
    assert all(len(t.runs) == 3 and t.first > 0 and float(r) == 1.0 for t, r in out.values())


@pytest.mark.parametrize(
    ("group", "packages"),
    [(jax_peers, ("diffusionjax", "flaxdiff")), (flow_peer, ("flowjax",))],
)
def test_peer_groups_are_registered_and_skip_without_their_package(monkeypatch, group, packages):
    assert group.__name__.rsplit(".", 1)[1] in run.GROUPS
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    text = group.run(config.quick(), [])
    assert "Skipped" in text and all(name in text for name in packages)


def test_user_lines_counts_code_only():
    def snippet(x):
        """Docstring."""
        # a comment

        y = x + 1
        return y

    assert jax_peers.user_lines(snippet, snippet) == 4


def test_equal_quality_needs_the_target_held_from_there_on():
    good, wide, far, nan = (0.001, 0.05), (0.001, 0.5), (0.01, 0.05), (float("nan"), 0.05)
    cells = lambda *q: [(nfe, *c) for nfe, c in zip((5, 9, 19, 49), q, strict=True)]
    assert jax_peers.reaches_target(cells(far, good, good, good)) == (9, *good)
    assert jax_peers.reaches_target(cells(good, wide, good, good)) == (19, *good)  # left it at 9
    assert jax_peers.reaches_target(cells(good, good, good, far)) is None
    assert jax_peers.reaches_target(cells(nan, nan, good, good)) == (19, *good)


def test_gpu_run_replaces_only_section_6_and_cpu_runs_keep_it(tmp_path):
    """`--gpu` writes its tables as section 6 (headings one level down, the device named by
    the machine table) and leaves every other byte of RESULTS.md; a CPU run carries an
    existing section 6 over, or the placeholder when there is none."""
    path = tmp_path / "RESULTS.md"
    head = "# diffjax benchmarks\n\n## 1. Overhead\n\n| a |\n|---|\n\n## 5b. Recipes\n\ntext\n"
    path.write_text(head + "\n" + run.gpu.SECTION + "\n")
    assert run.kept_gpu_section(str(path)) == run.gpu.SECTION
    assert run.kept_gpu_section(str(tmp_path / "missing.md")) == run.gpu.SECTION
    section = run.gpu_section("## Machine\n\n| accelerator | H |", ["## 1. Overhead\n\nx"], "| t |")
    assert section.startswith(run.GPU_HEADING + "\n")
    assert "\n### Machine\n" in section and "\n### 1. Overhead\n" in section
    assert "\n## 1." not in section and "| accelerator | H |" in section
    for _ in range(2):  # a second GPU run replaces the first, not appends
        text = run.replace_gpu_section(str(path), section)
        path.write_text(text)
        assert text == head + "\n" + section + "\n"
    assert run.kept_gpu_section(str(path)) == section
