"""End-to-end tests of scripts/train.py, sample.py and evaluate.py (in-process `main(argv)`).

Tiny runs (a 2x32 MLP, tens of steps) check the plumbing: argument handling, checkpoints,
exact resumption, the refusal of mismatched configurations, and the model views of
`common.Run` against the exact eps of a Gaussian mixture.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import signal
import struct
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

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


def _events(directory: str) -> list:
    """Every TensorBoard `Event` in `directory`'s event files, parsed from the TFRecord format
    (u64 length, u32 its CRC, the record, u32 its CRC)."""
    events = []
    for name in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        raw, i = open(name, "rb").read(), 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i : i + 8])
            events.append(event_pb2.Event.FromString(raw[i + 12 : i + 12 + n]))
            i += 12 + n + 4
    return events


def _metrics(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


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


_COUNT_COMPILES = """
import collections, jax, runpy, sys
events = collections.Counter()
jax.monitoring.register_event_listener(lambda name, **kw: events.update([name]))
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print("misses", events["/jax/compilation_cache/cache_misses"], "hits", events["/jax/compilation_cache/cache_hits"])
"""


def test_second_run_compiles_nothing(tmp_path, monkeypatch):
    """The command line turns on the persistent compilation cache ($DIFFJAX_COMPILATION_CACHE):
    the first run fills it, a second run of the same configuration takes every program from
    it (no cache miss), and `off` turns it off."""
    argv = [os.path.join(SCRIPTS, "train.py"), "--workdir", str(tmp_path / "run"), "--overwrite"]
    argv += ["--steps", "2", *TINY, *NO_EVAL]

    def counts(cache: str) -> tuple[int, int]:
        env = {**os.environ, "DIFFJAX_COMPILATION_CACHE": cache}
        proc = subprocess.run([sys.executable, "-c", _COUNT_COMPILES, *argv], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        _, misses, _, hits = proc.stdout.split()[-4:]
        return int(misses), int(hits)

    first, second = counts(str(tmp_path / "cache")), counts(str(tmp_path / "cache"))
    assert first[0] > 10 and second == (0, sum(first)), (first, second)
    monkeypatch.setenv("DIFFJAX_COMPILATION_CACHE", "off")
    assert dj.enable_compilation_cache() is None
    with pytest.raises(TypeError, match="directory"):
        dj.enable_compilation_cache(3)


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
    """A conditional two-class eps-DSM run on VP: 40 steps, a sample figure every 20,
    evaluated with DPM-Solver and the PF-ODE NLL."""
    workdir = str(tmp_path_factory.mktemp("two_class"))
    argv = ["--config", "two_class", "--process", "vp", "--loss", "dsm"]  # has a DDPM bound
    argv += ["--workdir", workdir, "--steps", "40", "--sample_every", "20", *TINY]
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


def test_train_writes_logs(trained):
    """metrics.jsonl: one row per logged step, falling loss, the learning rate past its
    5-step warm-up on the default cosine decay (peak 3e-3, 0 at step 3000); the TensorBoard
    event file holds the same losses and the sample figures' images."""
    rows = _metrics(trained)
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["loss"] < rows[0]["loss"]
    cosine = lambda k: 1.5e-3 * (1 + math.cos(math.pi * (k - 5) / (3000 - 5)))
    # the rate of the update that made step s: after s - 1 updates
    assert [r["lr"] for r in rows] == [pytest.approx(cosine(r["step"] - 1), rel=1e-5) for r in rows]
    assert all(a["wall_time"] <= b["wall_time"] for a, b in zip(rows, rows[1:], strict=False))
    (board,) = glob.glob(os.path.join(trained, "tensorboard"))
    values = [(e.step, v) for e in _events(board) for v in e.summary.value]
    losses = [(step, v.simple_value) for step, v in values if v.tag == "train/loss"]
    assert losses == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in rows]
    assert [step for step, v in values if v.tag == "samples" and v.image.height] == [20, 40]
    for step in (20, 40):
        assert os.path.getsize(os.path.join(trained, "samples", f"step_{step:06d}.png")) > 5_000


def test_trained_model_loads_and_samples_as_the_run(trained):
    """`dj.load(<workdir>/model)` is the run's model with its EMA parameters: the same
    parameters, and guided samples equal to those of `Run.model`, bit for bit."""
    run, params, _ = common.load_run(trained)
    path = os.path.join(trained, "model")
    model = dj.load(path)
    for u, v in zip(jax.tree.leaves(model.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(u, v)
    labels = common.labels_for(run, "all", 64)
    null = dj.pretrained.read_config(path)["num_classes"]
    guided = dj.classifier_free(model, labels, null_label=null, weight=2.0)
    own = run.model(params, label=labels, weight=2.0)
    x, y = (dj.samplers.ddim(jax.random.key(5), m, (64, 2), num_steps=3)[0] for m in (guided, own))
    np.testing.assert_array_equal(x, y)


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


@pytest.mark.parametrize(
    "argv",
    [
        ["--process", "rectified_flow", "--loss", "flow_matching", "--time_sampling",
         "logit_normal"],
        ["--config", "two_class", "--process", "edm", "--loss", "edm", "--sigma_data", "1"],
    ],  # fmt: skip
    ids=["flow_matching", "edm_conditional"],
)
def test_flow_matching_and_edm_train_and_evaluate(argv, tmp_path):
    """A velocity network (flow matching) and an EDM-preconditioned conditional one trained by
    train.py: evaluate.py loads them, samples (DPM-Solver; classifier-free guidance for the
    conditional one) and integrates the PF-ODE NLL."""
    workdir = str(tmp_path)
    argv = [*argv, "--workdir", workdir, "--steps", "20", *TINY, "--checkpoint_every", "20"]
    assert train.main([*argv, *NO_EVAL]) == 0
    res = os.path.join(workdir, "eval.json")
    guided = ["--guidance", "2"] if "two_class" in argv else []
    argv = ["--workdir", workdir, "--samplers", "dpm_solver", "--num_samples", "200", *guided]
    assert evaluate.main([*argv, "--nll_points", "32", "--no-vlb", "--out", res]) == 0
    with open(res) as f:
        res = json.load(f)
    assert np.isfinite(res["samplers"]["dpm_solver"]["energy_distance"])
    assert res["pf_ode"]["nll"] > res["exact_nll"] - 4 * res["pf_ode"]["nll_se"]


def test_loss_options_are_checked_in_one_line(capsys):
    """Predictions that flow_matching and edm do not train, --weighting with them, schedules
    and non-positive knobs are one-line errors before anything compiles; a config.json
    written before these options existed still loads (their defaults, its prediction)."""
    cases = [
        (["--loss", "flow_matching", "--prediction", "eps"], "pass --prediction velocity"),
        (["--loss", "edm", "--prediction", "v"], "pass --prediction x0"),
        (["--loss", "flow_matching", "--process", "cosine"], "needs a continuous process"),
        (["--loss", "edm", "--weighting", "snr"], "--weighting applies to --loss dsm only"),
        (["--loss", "edm", "--sigma_data", "0"], "--sigma_data must be positive"),
        (["--loss", "dsm", "--weighting", "simple", "--importance_sampling"], "needs --loss dsm"),
        (["--loss", "edm", "--importance_sampling"], "--importance_sampling needs --loss dsm"),
        (["--eval_t_eps", "0"], "--eval_t_eps must be positive"),
    ]
    for argv, message in cases:
        assert train.main([*argv, *TINY, *NO_EVAL]) == 2
        assert message in _stderr_line(capsys), argv
    old = json.loads(configs.config_to_json(configs.Config(prediction="v")))
    for name in ("time_sampling", "logit_mean", "logit_std", "sigma_data", "p_mean", "p_std"):
        del old[name]
    config = configs.config_from_json(json.dumps(old))
    assert config.prediction == "v" and common.model_prediction(config) == "v"


def _final_state(workdir: str) -> training.TrainState:
    with open(os.path.join(workdir, "config.json")) as f:
        run = common.build(configs.config_from_json(f.read()))
    return common.restore(run, workdir)[1]


def _assert_same_state(a: str, b: str, steps: int) -> None:
    x, y = _final_state(a), _final_state(b)
    assert int(x.step) == int(y.step) == steps
    for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


class _SigintMetrics(dict):
    """The step's metrics; reading `loss` first delivers a real SIGINT: the moment right
    after the loop has rebound `state` (where an interrupt used to land before the step
    counter moved)."""

    def __getitem__(self, name):
        if name == "loss" and not self.get("_sent"):
            dict.__setitem__(self, "_sent", True)
            signal.raise_signal(signal.SIGINT)
        return dict.__getitem__(self, name)


class _Bar:
    """Stands in for tqdm: records `(step, postfix)` at each `set_postfix`."""

    records: list = []

    def __init__(self, total, initial, **kwargs):
        self.n = initial

    def update(self, n):
        self.n += n

    def set_postfix(self, postfix):
        _Bar.records.append((self.n, postfix))

    def close(self):
        pass


def test_resume_refuses_mismatch(tmp_path, capsys):
    a = str(tmp_path / "a")
    base = [*TINY, *NO_EVAL]
    assert train.main(["--workdir", a, "--steps", "10", "--no-ema", *base]) == 0
    raw = _final_state(a).params  # --no-ema: model/ holds the raw parameters
    saved = dj.load(os.path.join(a, "model")).params
    for u, v in zip(jax.tree.leaves(saved), jax.tree.leaves(raw), strict=True):
        np.testing.assert_array_equal(u, v)
    capsys.readouterr()
    assert train.main(["--workdir", a, "--steps", "60", "--resume", "--lr", "0.01"]) == 2
    assert "lr: 0.003 -> 0.01" in _stderr_line(capsys)
    assert train.main(["--workdir", a, "--steps", "60", *base]) == 2
    assert "--resume" in _stderr_line(capsys)


def test_ctrl_c_is_a_clean_cut_and_resume_is_bit_identical(tmp_path, monkeypatch, capsys):
    """Real SIGINTs at two random steps (right after `state` is rebound) and one in the middle
    of Orbax's write of the step-20 checkpoint: each run saves the state of the step it
    reports, exits 130, and `--resume` prints where it resumed; the final parameters, EMA
    and optimiser state equal an uninterrupted 40-step run bit for bit. The last session's
    progress-bar losses are the means of the losses of exactly the steps in each window."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    base = [*TINY, *NO_EVAL, "--steps", "40"]
    assert train.main(["--workdir", b, *base]) == 0
    out = capsys.readouterr().out
    assert "trained 40 steps in" in out and "has not fallen" not in out
    rng = np.random.default_rng(0)
    cut1, cut2 = int(rng.integers(1, 19)), int(rng.integers(21, 30))

    make_train_step, save = training.make_train_step, training.Checkpointer.save
    plan = {"sigint_after": None, "save_cut": None, "losses": []}

    def make(*args, **kwargs):
        step_fn, calls = make_train_step(*args, **kwargs), [0]

        def stepped(state, batch, key):
            state, metrics = step_fn(state, batch, key)
            calls[0] += 1
            plan["losses"].append(float(metrics["loss"]))
            if calls[0] == plan["sigint_after"]:
                metrics = _SigintMetrics(metrics)
            return state, metrics

        return stepped

    def saving(self, state, step=None, *, force=False):
        if step == plan["save_cut"]:
            plan["save_cut"] = "armed"
        try:
            return save(self, state, step, force=force)
        finally:
            plan["save_cut"] = None if plan["save_cut"] == "armed" else plan["save_cut"]

    record = jax.monitoring.record_event_duration_secs

    def monitored(event, *args, **kwargs):  # Orbax reports timings in the middle of a save
        if plan["save_cut"] == "armed" and "/orbax/write/" in event:
            plan["save_cut"] = "sent"
            signal.raise_signal(signal.SIGINT)
        return record(event, *args, **kwargs)

    monkeypatch.setattr(training, "make_train_step", make)
    monkeypatch.setattr(training.Checkpointer, "save", saving)
    monkeypatch.setattr(jax.monitoring, "record_event_duration_secs", monitored)
    resume = ["--workdir", a, "--steps", "40", "--resume"]

    plan["sigint_after"] = cut1
    assert train.main(["--workdir", a, *base]) == 130
    assert f"interrupted at step {cut1}:" in capsys.readouterr().err
    assert dj.pretrained.read_config(os.path.join(a, "model"))["prediction"] == "x0"

    plan["sigint_after"], plan["save_cut"] = None, 20
    assert train.main(resume) == 130
    assert plan["save_cut"] == "sent"
    out, err = capsys.readouterr()
    assert f"resumed from step {cut1}" in out and "interrupted at step 20:" in err

    plan["sigint_after"] = cut2 - 20
    assert train.main(resume) == 130
    assert f"interrupted at step {cut2}:" in capsys.readouterr().err

    plan["sigint_after"], plan["losses"] = None, []
    monkeypatch.setattr(train, "tqdm", _Bar)
    _Bar.records.clear()
    assert train.main(resume) == 0
    out = capsys.readouterr().out
    assert f"resumed from step {cut2}" in out
    assert (
        f"trained {40 - cut2} steps (steps {cut2 + 1}..40 of 40, resumed from step {cut2})" in out
    )
    assert [n for n, _ in _Bar.records] == [30, 40]
    assert [r["step"] for r in _metrics(a)] == [10, 20, 30, 40]  # one row per step
    for n, postfix in _Bar.records:
        window = plan["losses"][max(n - 10, cut2) - cut2 : n - cut2]
        assert float(postfix["loss"]) == pytest.approx(np.mean(window), abs=1e-4), (n, window)
    _assert_same_state(a, b, 40)


def test_train_streams_shards_and_resumes_at_the_step(tmp_path, monkeypatch, capsys):
    """`--dataset shards:<dir>` (two_class points and labels written shuffled by
    `pipeline.write_shards`): the first 400 examples are held out, and the training batches
    of a 10-step run resumed to 20 steps are the first 20 batches of the loader over the
    other 2000 (rows and labels from the shards, none held out), so the stream resumes at
    the step. Bad shard directories are one line."""
    from diffjax import pipeline

    x, y = map(np.asarray, dj.data.two_class(jax.random.key(5), 2400))
    order = np.random.default_rng(0).permutation(2400)
    shards = pipeline.write_shards({"x": x, "y": y}, tmp_path / "s", shard_size=500, order=order)
    make_train_step, seen = training.make_train_step, []

    def make(*args, **kwargs):
        step_fn = make_train_step(*args, **kwargs)

        def stepped(state, batch, key):
            seen.append(jax.tree.map(np.asarray, batch))
            return step_fn(state, batch, key)

        return stepped

    monkeypatch.setattr(training, "make_train_step", make)
    workdir = str(tmp_path / "a")
    base = [*TINY, *NO_EVAL, "--dataset", f"shards:{shards}", "--conditional"]
    assert train.main(["--workdir", workdir, *base, "--steps", "10"]) == 0
    assert "2000 train / 400 held-out (2,)" in capsys.readouterr().out
    assert train.main(["--workdir", workdir, "--steps", "20", "--resume"]) == 0
    assert "resumed from step 10" in capsys.readouterr().out
    loader = pipeline.make_loader(shards, batch_size=64, seed=0, skip_examples=400)
    held = set(order[:400].tolist())
    for xb, yb in seen:
        want = next(loader)
        np.testing.assert_array_equal(xb, want["x"])
        np.testing.assert_array_equal(yb, want["y"])
        rows = [int(np.flatnonzero((x == r).all(axis=1))[0]) for r in xb]
        assert not held & set(rows) and (y[rows] == yb).all()
    assert len(seen) == 20
    for where, message in ((tmp_path, "has no index.json"), (tmp_path / "no", "does not exist")):
        argv = [*TINY, *NO_EVAL, "--dataset", f"shards:{where}", "--workdir", str(tmp_path / "w")]
        assert train.main(argv) == 2
        assert message in _stderr_line(capsys)


# ----------------------------------------------------------------------------- data, options


def _run_dir(tmp_path, **fields) -> str:
    """A run directory with `config.json` (a tiny config) and an empty `checkpoints/`."""
    config = configs.Config(num_train=2000, num_heldout=400, batch_size=64, **fields)
    (tmp_path / "config.json").write_text(configs.config_to_json(config))
    (tmp_path / "checkpoints").mkdir()
    return str(tmp_path)


def test_label_guidance_and_sampler_checked_before_loading(tmp_path, capsys):
    """`--label` / `--guidance` on an unconditional run, and a sampler the model cannot use,
    are one-line errors (exit 2) reported before any checkpoint is read (there is none)."""
    workdir = _run_dir(tmp_path)
    for argv in (["--label", "1"], ["--label", "all"], ["--guidance", "2"]):
        assert sample.main(["--workdir", workdir, *argv]) == 2
        assert "need a conditional model" in _stderr_line(capsys)
    assert evaluate.main(["--workdir", workdir, "--guidance", "1"]) == 2
    assert "need a conditional model" in _stderr_line(capsys)
    (tmp_path / "ve").mkdir()
    ve = _run_dir(tmp_path / "ve", process="ve")
    assert sample.main(["--workdir", ve, "--sampler", "ddpm"]) == 2
    assert "needs a discrete schedule" in _stderr_line(capsys)
    (tmp_path / "cos").mkdir()
    cos = _run_dir(tmp_path / "cos", process="cosine", loss="ddpm")
    assert evaluate.main(["--workdir", cos, "--samplers", "dpm_solver"]) == 2
    assert "needs a continuous process" in _stderr_line(capsys)


def test_nan_data_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """NaN rows in held-out data: evaluate.py exits 2 with one line giving their count and
    first indices; an npz data set with inf pixels, and a damaged npz, stop train.py the
    same way, naming the file."""
    draw = common.TOY_SETS["eight_gaussians"]

    def nan_heldout(key, n):
        x = draw(key, n)
        return x.at[jnp.array([4, 9, 200])].set(jnp.nan) if n == 400 else x

    monkeypatch.setitem(common.TOY_SETS, "eight_gaussians", nan_heldout)
    assert evaluate.main(["--workdir", _run_dir(tmp_path)]) == 2
    line = _stderr_line(capsys)
    assert "held-out data: 3 of 400 rows hold NaN or inf (rows 4, 9, 200)" in line, line

    x = np.zeros((40, 4, 4), np.float32)
    x[[2, 31], 1, 1] = np.inf
    np.savez(tmp_path / "inf.npz", x=x)
    argv = ["--model", "unet", "--num_heldout", "8", "--workdir", str(tmp_path / "w"), *NO_EVAL]
    assert train.main(["--dataset", f"npz:{tmp_path / 'inf.npz'}", *argv]) == 2
    line = _stderr_line(capsys)
    assert "inf.npz" in line and "2 of 40 rows hold NaN or inf (rows 2, 31)" in line, line
    (tmp_path / "cut.npz").write_bytes((tmp_path / "inf.npz").read_bytes()[:300])
    assert train.main(["--dataset", f"npz:{tmp_path / 'cut.npz'}", *argv]) == 2
    line = _stderr_line(capsys)
    assert "cut.npz" in line and "not a readable .npz" in line, line


def test_resume_falls_back_past_a_corrupt_checkpoint(tmp_path, capsys):
    """Overwrite the newest checkpoint's array data with garbage: `--resume` warns, resumes
    from the previous verified checkpoint, and still ends bit-identical to a straight run:
    the same state, saved model and metrics.jsonl (whose step-20 row, written before the
    fall-back, is not repeated)."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    base = [*TINY, *NO_EVAL]
    assert train.main(["--workdir", a, "--steps", "20", *base]) == 0
    assert train.main(["--workdir", b, "--steps", "30", *base]) == 0
    # Every byte of every data file inverted (a single flipped bit is not always detected
    # here: OCDBT data files hold regions the restore never reads, so a flip there changes no
    # restored array; tests/test_training.py checks that flips in array data are refused).
    for name in glob.glob(os.path.join(a, "checkpoints", "20", "**", "d", "*"), recursive=True):
        raw = np.frombuffer(open(name, "rb").read(), np.uint8)
        open(name, "wb").write((raw ^ 0xFF).tobytes())
    capsys.readouterr()
    assert train.main(["--workdir", a, "--steps", "30", "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "warning: skipping checkpoint 20" in err and "resumed from step 10" in out
    _assert_same_state(a, b, 30)
    models = [dj.load(os.path.join(w, "model")).params for w in (a, b)]
    for u, v in zip(*map(jax.tree.leaves, models), strict=True):
        np.testing.assert_array_equal(u, v)
    rows = [_metrics(w) for w in (a, b)]
    assert [r["step"] for r in rows[0]] == [10, 20, 30]
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]


# ----------------------------------------------------------------------------- training


def test_score_prediction_that_cannot_train_is_refused(capsys):
    """Score prediction with unweighted targets `-eps/sigma`: `--weighting simple` (dsm) and
    the ddpm loss are refused with a one-line reason."""
    argv = ["--process", "ve", "--loss", "dsm", "--prediction", "score", "--weighting", "simple"]
    argv += [*TINY, *NO_EVAL]
    assert train.main(argv) == 2
    assert "--weighting snr" in _stderr_line(capsys)
    argv = ["--process", "cosine", "--loss", "ddpm", "--prediction", "score", *TINY, *NO_EVAL]
    assert train.main(argv) == 2
    assert "--prediction score with --loss ddpm does not train" in _stderr_line(capsys)


ACCEPTED = [
    (process, prediction, "dsm" if process in configs.SDES else "ddpm")
    for process in ("vp", "subvp", "ve", "linear", "cosine")
    for prediction in ("eps", "x0", "v", "score")
    if not (process in configs.SCHEDULES and prediction == "score")
] + [  # the other losses fix the prediction; a few of their (process, loss) pairs
    ("rectified_flow", "auto", "flow_matching"),
    ("vp", "auto", "flow_matching"),
    ("edm", "auto", "edm"),
    ("vp", "auto", "edm"),
]


@pytest.mark.slow
@pytest.mark.parametrize("process, prediction, loss", ACCEPTED)
def test_every_process_and_prediction_trains(process, prediction, loss):
    """Every combination the command line accepts (default weighting `auto`), trained
    with the scripts' own loss and optimiser: the mean loss of the last 100 of 400 steps
    lies more than 2 standard errors below that of the first 100 (`train._LossWindows`,
    the criterion of train.py's warning), and the eps error falls too. (`ve` + `score`
    with the `simple` weighting used to stay flat at 4e3-1e4.)"""
    config = configs.Config(
        num_train=4096, num_heldout=16, batch_size=256, hidden=(64, 64), embed_dim=32,
        process=process, loss=loss, prediction=prediction, warmup_steps=20, ema_decay=0.0,
    )  # fmt: skip
    run = common.build(config)
    loss_fn = common.make_loss_fn(config, run.dataset, run.apply, run.process)
    step = training.make_train_step(loss_fn, run.optimizer)
    idx = jax.random.randint(jax.random.key(1), (400, 256), 0, 4096)
    batches = jnp.asarray(run.dataset.x_train)[idx]
    keys = jax.random.split(jax.random.key(2), 400)
    scan = jax.jit(lambda s, xs, ks: jax.lax.scan(lambda s, a: step(s, *a), s, (xs, ks)))
    _, metrics = scan(run.initial_state(), batches, keys)
    metrics = jax.device_get(metrics)
    windows = train._LossWindows()
    for k in range(400):
        windows.add({name: metrics[name][k] for name in ("loss", "nonfinite")})
        if k % 100 == 99:
            windows.close_window()
    assert windows.fell(), (windows.first, windows.last)
    eps = metrics["eps_mse"]
    assert np.median(eps[-100:]) < np.median(eps[:100]), (eps[:100].mean(), eps[-100:].mean())


def test_train_warns_when_the_loss_has_not_fallen(tmp_path, capsys):
    """A learning rate of 0: the loss cannot fall, train.py says so on stderr and in the
    summary line. (On eps-DSM: the default EDM loss is heavier-tailed, and its last 10-step
    window of seed 0 lies below the first by chance.)"""
    argv = ["--workdir", str(tmp_path), "--steps", "40", "--lr", "0", *TINY, *NO_EVAL]
    argv += ["--process", "vp", "--loss", "dsm"]
    assert train.main(argv) == 0
    out, err = capsys.readouterr()
    assert "warning: the training loss has not fallen over this run" in err
    assert "(the loss has not fallen)" in out
