"""End-to-end tests of scripts/train.py, sample.py and evaluate.py (in-process `main(argv)`).

Tiny runs (a 2x32 MLP, tens of steps) check the plumbing: argument handling, checkpoints,
exact resumption, the refusal of mismatched configurations, and the model views of
`common.Run` against the exact eps of a Gaussian mixture.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj
from diffjax import training

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)

import common  # noqa: E402
import configs  # noqa: E402
import evaluate  # noqa: E402
import sample  # noqa: E402
import train  # noqa: E402

TINY = [
    "--num_train", "2000", "--num_heldout", "400", "--batch_size", "64", "--hidden", "32,32",
    "--embed_dim", "16", "--log_every", "10", "--checkpoint_every", "10", "--warmup_steps", "5",
]  # fmt: skip
NO_EVAL = ["--eval_samplers", "", "--no-eval_nll"]


def _stderr_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "module, cls",
    [(train, configs.Config), (sample, configs.SampleOptions), (evaluate, configs.EvalOptions)],
)
def test_help_lists_every_option(module, cls, capsys):
    with pytest.raises(SystemExit) as exc:
        module.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(cls):
        assert f"--{f.name}" in out
    assert out.count("(default:") >= len(dataclasses.fields(cls))


def test_help_shows_preset_defaults(capsys):
    with pytest.raises(SystemExit):
        train.main(["--config", "digits", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--model {mlp,unet} mlp (vectors) or unet (images) (default: unet)" in out


@pytest.mark.parametrize("module", [train, sample, evaluate])
def test_unknown_option_is_one_line(module, capsys):
    assert module.main(["--no_such_option", "1"]) == 2
    assert "unrecognized arguments: --no_such_option" in _stderr_line(capsys)


def test_bad_values_are_one_line(capsys):
    assert train.main(["--process", "bogus"]) == 2
    assert "invalid choice" in _stderr_line(capsys)
    assert train.main(["--hidden", "a,b"]) == 2
    assert "--hidden" in _stderr_line(capsys)
    assert train.main(["--process", "ve", "--loss", "ddpm", *TINY, *NO_EVAL]) == 2
    assert "--loss ddpm needs a schedule" in _stderr_line(capsys)
    assert train.main(["--model", "unet", *TINY, *NO_EVAL]) == 2
    assert "--model unet is for images" in _stderr_line(capsys)


def test_cli_process_exit_code():
    """The real command line: exit code 2 and one line on stderr, no traceback."""
    proc = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, "sample.py"), "--bogus"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unrecognized arguments: --bogus (see --help)"
    ]


@pytest.mark.parametrize("module", [sample, evaluate])
def test_missing_run_or_checkpoint(module, tmp_path, capsys):
    assert module.main(["--workdir", str(tmp_path)]) == 2
    assert "no config.json" in _stderr_line(capsys)
    (tmp_path / "config.json").write_text(configs.config_to_json(configs.Config()))
    assert module.main(["--workdir", str(tmp_path)]) == 2
    assert "no checkpoints" in _stderr_line(capsys)


# ----------------------------------------------------------------------------- model views


def test_model_views_match_exact_eps():
    """`Run.model(discrete=True)` of a VP model (called at t = i/N) and `Run.model()` of a
    linear-DDPM model (called at i = t N) give the exact eps of the other process, up to the
    O(1/N) gap between `VPSDE` and its DDPM discretisation."""
    gmm = dj.GaussianMixture(*dj.data.eight_gaussians_params())
    x0 = gmm.sample(jax.random.key(0), 256)
    noise = jax.random.normal(jax.random.key(1), x0.shape)
    for process, discrete in (("vp", True), ("linear", False)):
        loss = "dsm" if process == "vp" else "ddpm"
        config = configs.Config(
            num_train=16, num_heldout=16, batch_size=16, process=process, loss=loss
        )
        run = common.build(config)
        native = dj.exact_model(gmm, run.process, "eps")
        if process == "linear":  # the exact schedule eps takes integer steps
            apply = lambda params, x, t, fn=native: fn(x, jnp.round(t).astype(jnp.int32))
        else:
            apply = lambda params, x, t, fn=native: fn(x, t)
        run = dataclasses.replace(run, apply=apply)
        other = run.schedule if discrete else run.sde
        exact = dj.exact_model(gmm, other, "eps")
        model = run.model(jnp.zeros(()), discrete=discrete)  # `apply` ignores the params
        assert model.process is other
        for i in (1, 10, 100, 500, 900):
            t = jnp.full((256,), i) if discrete else jnp.full((256,), i / 1000)
            x_t = dj.q_sample(other, x0, t, noise)
            err = float(jnp.sqrt(jnp.mean((model.eps(x_t, t) - exact(x_t, t)) ** 2)))
            assert err < 0.02, (process, i, err)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A conditional two-class run: 40 steps, evaluated with DPM-Solver and the PF-ODE NLL."""
    workdir = str(tmp_path_factory.mktemp("two_class"))
    argv = ["--config", "two_class", "--workdir", workdir, "--steps", "40", *TINY]
    argv += ["--eval_samplers", "dpm_solver", "--eval_samples", "300"]
    argv += ["--eval_nll_points", "64", "--figure", os.path.join(workdir, "fig.png")]
    assert train.main(argv) == 0
    return workdir


def test_train_writes_config_checkpoints_figure(trained):
    with open(os.path.join(trained, "config.json")) as f:
        config = configs.config_from_json(f.read())
    assert config.dataset == "two_class" and config.conditional and config.steps == 40
    assert config.hidden == (32, 32)
    with training.Checkpointer(os.path.join(trained, "checkpoints"), create=False) as ckpt:
        assert ckpt.all_steps() == [20, 30, 40]  # keep_checkpoints = 3
    assert os.path.getsize(os.path.join(trained, "fig.png")) > 10_000


def test_sample_with_guidance(trained, tmp_path, capsys):
    out = str(tmp_path / "s")
    argv = ["--workdir", trained, "--sampler", "ddim", "--num_steps", "10", "--num_samples", "50"]
    assert sample.main([*argv, "--label", "1", "--guidance", "2", "--out", out]) == 0
    with np.load(out + ".npz") as f:
        assert f["samples"].shape == (50, 2) and np.all(np.isfinite(f["samples"]))
        np.testing.assert_array_equal(f["labels"], np.ones(50))
    assert os.path.getsize(out + ".png") > 5_000
    assert sample.main([*argv, "--label", "7"]) == 2
    assert "--label must lie in 0..1" in _stderr_line(capsys)


def test_evaluate_reports_likelihoods(trained):
    out = os.path.join(trained, "eval.json")
    argv = ["--workdir", trained, "--samplers", "pc", "--num_samples", "200"]
    argv += ["--nll_points", "64", "--vlb_points", "16", "--out", out]
    assert evaluate.main(argv) == 0
    with open(out) as f:
        res = json.load(f)
    assert res["step"] == 40 and res["samplers"]["pc"]["nfe"] == 501
    assert np.isfinite(res["samplers"]["pc"]["energy_distance"])
    # Cross-entropy >= entropy: the model's NLL of held-out data cannot beat the exact
    # density's, up to Monte Carlo error (64 points, 4 standard errors).
    for name in ("pf_ode", "ddpm_bound"):
        r = res[name]
        assert r["nll"] > res["exact_nll"] - 4 * r["nll_se"], (name, r, res["exact_nll"])


def _final_state(workdir: str) -> training.TrainState:
    with open(os.path.join(workdir, "config.json")) as f:
        run = common.build(configs.config_from_json(f.read()))
    return common.restore(run, workdir)


def test_resume_equals_uninterrupted_and_refuses_mismatch(tmp_path, monkeypatch, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    base = [*TINY, *NO_EVAL]
    assert train.main(["--workdir", a, "--steps", "30", *base]) == 0
    capsys.readouterr()
    # Mismatched configuration, or a fresh run over existing checkpoints: refused.
    assert train.main(["--workdir", a, "--steps", "60", "--resume", "--lr", "0.01"]) == 2
    assert "lr: 0.001 -> 0.01" in _stderr_line(capsys)
    assert train.main(["--workdir", a, "--steps", "60", *base]) == 2
    assert "--resume" in _stderr_line(capsys)

    # Resume to 60 with a Ctrl-C injected before step 46: checkpoint at 45, exit code 130.
    calls = {"n": 0}
    shard = training.shard_batch

    def interrupt_once(batch, mesh):
        calls["n"] += 1
        if calls["n"] == 16:
            raise KeyboardInterrupt
        return shard(batch, mesh)

    monkeypatch.setattr(training, "shard_batch", interrupt_once)
    assert train.main(["--workdir", a, "--steps", "60", "--resume"]) == 130
    assert "interrupted at step 45" in capsys.readouterr().err
    monkeypatch.setattr(training, "shard_batch", shard)
    assert train.main(["--workdir", a, "--steps", "60", "--resume"]) == 0

    assert train.main(["--workdir", b, "--steps", "60", *base]) == 0
    resumed, straight = _final_state(a), _final_state(b)
    assert int(resumed.step) == int(straight.step) == 60
    for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
