"""Train a diffusion model, checkpoint it, and evaluate it at the end.

    python scripts/train.py                                   # eight Gaussians, EDM, MLP
    python scripts/train.py --config digits                   # 8x8 digits, U-Net, conditional
    python scripts/train.py --config digits --steps 6000 --lr_decay_steps 6000 --workdir outputs/d6k
    python scripts/train.py --dataset two_moons --process vp --loss dsm --workdir outputs/dsm
    python scripts/train.py --process ve --loss dsm --prediction score --workdir outputs/ve
    python scripts/train.py --process rectified_flow --loss flow_matching --workdir outputs/fm
    python scripts/train.py --workdir outputs/eight_gaussians --steps 6000 --resume
    python scripts/train.py --help                            # every option with its default

The run directory holds `config.json`, `checkpoints/<step>/` (Orbax, each with a sha256 of
its arrays), the trained model `model/` (`dj.save_pretrained` of the EMA parameters, or the raw
ones with `--no-ema`; `dj.load("<workdir>/model")` gives a `dj.Model` to sample from), written
at the end and on Ctrl-C, and the training logs: `metrics.jsonl` (one JSON object per logged
step: `step`, `loss`, `lr`, `wall_time`), TensorBoard event files in `tensorboard/`
(`tensorboard --logdir <workdir>/tensorboard`) and, with `--sample_every N`, a sample figure
`samples/step_<N>.png` every N steps. `--resume` continues from the newest checkpoint that verifies (newer ones that
fail are reported and set aside as `<step>.unverified`) with the stored configuration;
options given on the command line must agree with it, except `--steps`, the logging,
checkpoint and evaluation options (a mismatch is refused with exit code 2). A resumed run
gives the same parameters as an uninterrupted one. Ctrl-C stops after the current step (also
when it arrives during a checkpoint write), saves that step's state, reports the step and
exits with code 130. A warning says when the loss has not fallen over the run. All devices
are used through a data-parallel mesh; `--distributed` initialises multi-host JAX first.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import evaluate  # noqa: E402
import jax  # noqa: E402
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import plots  # noqa: E402
from configs import (  # noqa: E402
    Config,
    UsageError,
    config_mismatch,
    config_to_json,
    parse_train_args,
    resumed_config,
    run_main,
)
from tensorboardX import SummaryWriter  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from diffjax import cache, data, training  # noqa: E402

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"


class Interrupted(Exception):
    """Training stopped by Ctrl-C after saving a checkpoint."""


def _prepare_workdir(config: Config, workdir: str, resume: bool, overwrite: bool) -> None:
    """Check `--resume` / `--overwrite` against what `workdir` holds; write `config.json`."""
    ckpt_dir = os.path.join(workdir, common.CHECKPOINT_DIR)
    has_checkpoints = os.path.isdir(ckpt_dir) and any(
        name.isdigit() for name in os.listdir(ckpt_dir)
    )
    if resume:
        if not has_checkpoints:
            raise UsageError(f"--resume: no checkpoints in {workdir!r}.")
        diff = config_mismatch(common.read_config(workdir), config)
        if diff:
            raise UsageError(
                f"--resume: the configuration differs from the run in {workdir!r} "
                f"({'; '.join(diff)}); resume with the same options or use a new --workdir."
            )
    elif has_checkpoints:
        if not overwrite:
            raise UsageError(
                f"{workdir!r} already holds checkpoints: pass --resume to continue, "
                "--overwrite to start again, or choose another --workdir."
            )
        shutil.rmtree(ckpt_dir)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, common.CONFIG_FILE), "w") as f:
        f.write(config_to_json(config) + "\n")


def _batches(run: common.Run, start: int):
    """The stream of global batches from step `start` on, as each process's local slice.

    The stream is a pure function of the seed (`data.batches`), so a resumed run sees the same
    batches as an uninterrupted one.
    """
    ds, config = run.dataset, run.config
    procs = jax.process_count()
    if ds.shards is not None:
        return _shard_batches(run, start, config.batch_size // procs)
    arrays = (ds.x_train, ds.y_train) if config.conditional else ds.x_train
    key = jax.random.fold_in(jax.random.key(config.seed), 1)
    stream = itertools.islice(data.batches(key, arrays, config.batch_size), start, None)
    if procs == 1:
        return stream
    local = config.batch_size // procs
    lo = jax.process_index() * local
    return (jax.tree.map(lambda a: a[lo : lo + local], b) for b in stream)


def _shard_batches(run: common.Run, start: int, local_batch: int):
    """This process's batches of a `shards:<dir>` data set from step `start` on: its own part
    of the examples after the held-out head (`pipeline.make_loader`), a pure function of the
    seed and the step."""
    from diffjax import pipeline

    ds, config = run.dataset, run.config
    try:
        loader = pipeline.make_loader(
            ds.shards, batch_size=local_batch, seed=config.seed,
            skip_examples=config.num_heldout, start_batch=start,
        )  # fmt: skip
    except ModuleNotFoundError as err:
        raise UsageError(
            f"--dataset shards: needs Grain, pip install diffjax[data] ({err})."
        ) from err
    except ValueError as err:
        raise UsageError(str(err).splitlines()[0]) from err
    return ((b["x"], b["y"]) if config.conditional else b["x"] for b in loader)


def _save_final(ckpt: training.Checkpointer, state: training.TrainState, step: int) -> None:
    if ckpt.latest_step() != step:
        ckpt.save(state, step, force=True)
    ckpt.wait()


class _StopRequest:
    """While active, SIGINT (Ctrl-C) only sets `requested`, checked by the loop between steps.

    So an interrupt never lands between rebinding `state` and advancing the step counter, nor
    inside a checkpoint write (Orbax would be left half-shut). Outside the main thread, where
    no handler can be installed, it does nothing.
    """

    requested = False

    def __enter__(self) -> _StopRequest:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _LossWindows:
    """Mean training loss per `log_every` window (the progress bar's value) over this session.

    Steps skipped as non-finite are left out. The loss has *fallen* when the last complete
    window's mean lies more than 2 standard errors (of the difference) below the first's.
    """

    def __init__(self):
        self.first = self.last = None  # (mean, standard error) of a window
        self._reset()

    def _reset(self) -> None:
        self._sum = self._sq = self._n = 0.0

    def add(self, metrics) -> None:
        ok = 1 - metrics["nonfinite"]
        loss = jax.numpy.where(ok, metrics["loss"], 0.0)
        self._sum, self._sq, self._n = self._sum + loss, self._sq + loss**2, self._n + ok

    def close_window(self) -> float:
        """End the window; its mean loss (NaN when every step in it was skipped)."""
        n, total, sq = float(self._n), float(self._sum), float(self._sq)
        self._reset()
        if n == 0:
            return math.nan
        mean = total / n
        se = math.sqrt(max(sq / n - mean**2, 0.0) / max(n - 1, 1))
        self.first = self.first or (mean, se)
        self.last = (mean, se)
        return mean

    def fell(self) -> bool | None:
        """Whether the loss fell; `None` with fewer than two windows."""
        if self.first is None or self.first is self.last:
            return None
        (m0, s0), (m1, s1) = self.first, self.last
        return m1 < m0 - 2.0 * math.hypot(s0, s1)


class _Logs:
    """The training logs of a session that starts at step `start`.

    `metrics.jsonl`: one JSON object per logged step, `step`, `loss` (the mean over the steps
    since the previous row; `null` when every one was skipped as non-finite), `lr` (the
    learning rate of the step's update) and `wall_time` (Unix seconds). Rows after `start`,
    left by a session that got further than the checkpoint this one resumes from, are
    dropped first, so the file never repeats a step. TensorBoard: scalars `train/loss`,
    `train/lr` and images `samples` in `tensorboard/`; a fresh run empties it (and
    `samples/`), a resumed one purges the events after `start` (`purge_step`).
    `active=False` (processes other than 0) writes nothing.
    """

    def __init__(self, workdir: str, start: int, active: bool = True):
        self.active = active
        if not active:
            return
        path = os.path.join(workdir, METRICS_FILE)
        kept = []
        if start and os.path.isfile(path):
            with open(path) as f:
                for line in f:
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a crash
                        continue
                    if row["step"] <= start:
                        kept.append(json.dumps(row) + "\n")
        with open(path + ".tmp", "w") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)
        board = os.path.join(workdir, TENSORBOARD_DIR)
        if not start:
            for name in (board, os.path.join(workdir, SAMPLES_DIR)):
                shutil.rmtree(name, ignore_errors=True)
        self.writer = SummaryWriter(board, purge_step=start or None)
        self.file = open(path, "a")

    def scalars(self, step: int, loss: float, lr: float) -> None:
        if not self.active:
            return
        now = time.time()
        finite = loss if math.isfinite(loss) else None
        self.file.write(json.dumps({"step": step, "loss": finite, "lr": lr, "wall_time": now}))
        self.file.write("\n")
        self.file.flush()
        self.writer.add_scalar("train/loss", loss, step, walltime=now)
        self.writer.add_scalar("train/lr", lr, step, walltime=now)

    def image(self, step: int, path: str) -> None:
        if self.active:
            image = matplotlib.image.imread(path)[..., :3]
            self.writer.add_image("samples", image, step, dataformats="HWC")

    def close(self) -> None:
        if self.active:
            self.file.close()
            self.writer.close()


class _SampleFigures:
    """`samples/step_<N>.png` every `sample_every` steps: DPM-Solver (DDIM for models without
    a continuous view) from the same noise each time, 2000 points over the held-out data or
    64 images (all classes in turn, guidance `eval_guidance`), compiled once."""

    def __init__(self, run: common.Run, workdir: str):
        ds, config = run.dataset, run.config
        self.run, self.directory = run, os.path.join(workdir, SAMPLES_DIR)
        self.sampler = "dpm_solver" if run.sde is not None else "ddim"
        num = 64 if ds.is_image else 2000
        self.draw = common.make_sampler(run, self.sampler, num, weight=config.eval_guidance)
        self.labels = common.labels_for(run, "all", num)
        self.key = jax.random.fold_in(jax.random.key(config.seed), 3)

    def __call__(self, params, step: int) -> str:
        x, info = self.draw(params, self.key, self.labels)
        title = f"step {step}: {self.sampler}, NFE {int(info.nfe)}"
        path = os.path.join(self.directory, f"step_{step:06d}.png")
        return plots.samples_figure(path, title, np.asarray(x), self.run.dataset.x_heldout)


def _set_aside_newer(directory: str, step: int) -> None:
    """Rename the checkpoints newer than the resumed `step` (they failed verification) to
    `<step>.unverified`, so this run saves those steps afresh."""
    if jax.process_index() != 0:
        return
    for name in sorted(os.listdir(directory)):
        if name.isdigit() and int(name) > step:
            target = os.path.join(directory, name + ".unverified")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(os.path.join(directory, name), target)
            print(f"warning: checkpoint {name} set aside as {target}", file=sys.stderr)


def train(run: common.Run, workdir: str, resume: bool) -> tuple[training.TrainState, dict]:
    """Train up to `run.config.steps` steps (from the newest verified checkpoint with
    `resume`), writing the logs (`_Logs`, `_SampleFigures`) and, at the end or on Ctrl-C, the
    model `<workdir>/model` (`common.save_model`; single-process runs); returns the state
    and this session's summary (`start`, `steps`, the first and last window losses, whether
    the loss fell)."""
    config = run.config
    mesh = training.make_mesh()
    state = training.replicate(run.initial_state(), mesh)
    directory = os.path.join(workdir, common.CHECKPOINT_DIR)
    start = 0
    if resume:
        start, state = common.restore(run, workdir, like=state)
        _set_aside_newer(directory, start)
        print(f"resumed from step {start}")
    loss_fn = common.make_loss_fn(config, run.dataset, run.apply, run.process)
    train_step = training.make_train_step(
        loss_fn, run.optimizer, ema_decay=run.ema_decay, mesh=mesh
    )
    key = jax.random.fold_in(jax.random.key(config.seed), 2)
    batches = _batches(run, start)
    step = start
    losses, nonfinite = _LossWindows(), 0
    ckpt = training.Checkpointer(
        directory, save_interval_steps=config.checkpoint_every, max_to_keep=config.keep_checkpoints
    )
    single = jax.process_count() == 1
    logs = _Logs(workdir, start, active=jax.process_index() == 0)
    figures = _SampleFigures(run, workdir) if config.sample_every and single else None
    lr = common.learning_rate(config)
    saved = None
    bar = tqdm(total=config.steps, initial=start, unit="step", desc="train", smoothing=0.1)
    with ckpt, _StopRequest() as stop:
        try:
            while step < config.steps and not stop.requested:
                batch = training.shard_batch(next(batches), mesh)
                state, metrics = train_step(state, batch, jax.random.fold_in(key, step))
                step += 1
                losses.add(metrics)
                nonfinite = nonfinite + metrics["nonfinite"]
                bar.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    loss = losses.close_window()
                    postfix = {"loss": f"{loss:.4f}"}
                    if int(nonfinite):
                        postfix["skipped"] = int(nonfinite)
                    bar.set_postfix(postfix)
                    logs.scalars(step, loss, float(str(lr(max(int(state.step) - 1, 0)))))
                if figures is not None and step % config.sample_every == 0:
                    logs.image(step, figures(common.eval_params(run, state, config.ema), step))
                if step % config.checkpoint_every == 0:
                    ckpt.save(state, step)
            _save_final(ckpt, state, step)
            if single:
                params = common.eval_params(run, state, config.ema)
                saved = common.save_model(run, params, os.path.join(workdir, common.MODEL_DIR))
        finally:
            bar.close()
            logs.close()
    if saved:
        print(f"model ({common.params_kind(run, config.ema)} parameters of step {step}): {saved}")
    if stop.requested:
        raise Interrupted(
            f"interrupted at step {step}: checkpoint saved in {workdir}; continue with --resume."
        )
    first, last = (None if w is None else w[0] for w in (losses.first, losses.last))
    summary = {"start": start, "steps": step - start, "first_loss": first, "last_loss": last}
    return state, {**summary, "fell": losses.fell()}


def train_and_evaluate(
    config: Config,
    workdir: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    figure: str = "",
) -> dict:
    """Train `config` in `workdir`, then evaluate the final (EMA) parameters."""
    num_devices = jax.device_count()
    if config.batch_size % num_devices:
        raise UsageError(
            f"--batch_size {config.batch_size} must be divisible by the {num_devices} devices."
        )
    run = common.build(config)
    samplers = evaluate.parse_samplers(config.eval_samplers)
    for name in samplers:
        common.check_sampler(run, name)
    _prepare_workdir(config, workdir, resume, overwrite)
    ds = run.dataset
    size = sum(np.size(p) for p in jax.tree.leaves(run.init_params))
    detail = {
        "dsm": f", {common.dsm_weighting(config)} weighting",
        "flow_matching": f", {config.time_sampling} times",
        "edm": f", sigma_data {config.sigma_data:g}",
    }.get(config.loss, "")
    kind = common.model_prediction(config)
    print(
        f"{config.dataset}: {ds.num_train} train / {ds.x_heldout.shape[0]} held-out "
        f"{ds.event_shape}; {config.process} {config.loss} ({kind}{detail}); "
        f"{config.model} {size / 1e6:.2f}M params; {jax.device_count()} device(s)"
    )
    if 0 < config.lr_decay_steps < config.steps:
        print(
            f"warning: the learning rate reaches 0 at step {config.lr_decay_steps} "
            f"(--lr_decay_steps) before --steps {config.steps}; the later steps do not train.",
            file=sys.stderr,
        )
    start = time.perf_counter()
    state, summary = train(run, workdir, resume)
    print(_summary_line(summary, config.steps, time.perf_counter() - start))
    if summary["fell"] is False:
        print(
            "warning: the training loss has not fallen over this run; check --lr, "
            "--weighting and --prediction.",
            file=sys.stderr,
        )
    if not samplers and not config.eval_nll and not config.eval_vlb_points:
        return {}
    print(f"evaluating the {common.params_kind(run, config.ema)} parameters")
    params = common.eval_params(run, state, config.ema)
    return evaluate.evaluate(
        run,
        params,
        samplers=samplers,
        num_samples=config.eval_samples,
        nll=config.eval_nll,
        nll_points=config.eval_nll_points,
        vlb=config.eval_vlb_points > 0,
        vlb_points=config.eval_vlb_points,
        seed=config.seed,
        weight=config.eval_guidance,
        figure=figure or os.path.join(workdir, "summary.png"),
        grid=os.path.join(workdir, "samples.png"),
    )


def _summary_line(summary: dict, total: int, seconds: float) -> str:
    start, steps = summary["start"], summary["steps"]
    text = f"trained {steps} steps"
    if start:
        text += f" (steps {start + 1}..{start + steps} of {total}, resumed from step {start})"
    text += f" in {seconds:.1f} s"
    if summary["last_loss"] is not None:
        text += f"; loss {summary['first_loss']:.4f} -> {summary['last_loss']:.4f}"
    if summary["fell"] is False:
        text += " (the loss has not fallen)"
    return text


def main(argv=None) -> int:
    return run_main(_main, argv)


def _main(argv) -> int:
    config, opts = parse_train_args(argv)
    if opts.resume and os.path.isfile(os.path.join(opts.workdir, common.CONFIG_FILE)):
        config = resumed_config(common.read_config(opts.workdir), config, opts.explicit)
    if opts.distributed:
        jax.distributed.initialize()
    start = time.perf_counter()
    try:
        train_and_evaluate(
            config,
            opts.workdir,
            resume=opts.resume,
            overwrite=opts.overwrite,
            figure=opts.figure,
        )
    except Interrupted as err:
        print(err, file=sys.stderr)
        return 130
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    cache.enable_compilation_cache()
    sys.exit(main())
