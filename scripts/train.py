"""Train a diffusion model, checkpoint it, and evaluate it at the end.

    python scripts/train.py                                   # eight Gaussians, VP SDE, MLP
    python scripts/train.py --config digits                   # 8x8 digits, U-Net, conditional
    python scripts/train.py --config digits --steps 6000 --lr_decay_steps 6000 --workdir outputs/d6k
    python scripts/train.py --dataset two_moons --process ve --prediction score --workdir outputs/ve
    python scripts/train.py --workdir outputs/eight_gaussians --steps 6000 --resume
    python scripts/train.py --help                            # every option with its default

The run directory holds `config.json` and `checkpoints/<step>/` (Orbax). `--resume` continues
from the latest checkpoint with the stored configuration; options given on the command line
must agree with it, except `--steps`, the logging, checkpoint and evaluation options (a
mismatch is refused with exit code 2). A resumed run gives the same parameters as an
uninterrupted one. Ctrl-C saves a checkpoint and exits with code 130. All devices are used
through a data-parallel mesh; `--distributed` initialises multi-host JAX first.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import evaluate  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from configs import (  # noqa: E402
    Config,
    UsageError,
    config_mismatch,
    config_to_json,
    parse_train_args,
    resumed_config,
    run_main,
)
from tqdm.auto import tqdm  # noqa: E402

from diffjax import data, training  # noqa: E402


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
    arrays = (ds.x_train, ds.y_train) if config.conditional else ds.x_train
    key = jax.random.fold_in(jax.random.key(config.seed), 1)
    stream = itertools.islice(data.batches(key, arrays, config.batch_size), start, None)
    procs = jax.process_count()
    if procs == 1:
        return stream
    local = config.batch_size // procs
    lo = jax.process_index() * local
    return (jax.tree.map(lambda a: a[lo : lo + local], b) for b in stream)


def _save_final(ckpt: training.Checkpointer, state: training.TrainState, step: int) -> None:
    if ckpt.latest_step() != step:
        ckpt.save(state, step, force=True)
    ckpt.wait()


def train(run: common.Run, workdir: str, resume: bool) -> training.TrainState:
    """Train `run.config.steps` steps (from the latest checkpoint with `resume`)."""
    config = run.config
    mesh = training.make_mesh()
    state = training.replicate(run.initial_state(), mesh)
    ckpt = training.Checkpointer(
        os.path.join(workdir, common.CHECKPOINT_DIR),
        save_interval_steps=config.checkpoint_every,
        max_to_keep=config.keep_checkpoints,
    )
    with ckpt:
        start = 0
        if resume:
            start = ckpt.latest_step()
            state = common.restore(run, workdir, like=state, step=start)
        loss_fn = common.make_loss_fn(config, run.dataset, run.apply, run.process)
        train_step = training.make_train_step(
            loss_fn, run.optimizer, ema_decay=run.ema_decay, mesh=mesh
        )
        key = jax.random.fold_in(jax.random.key(config.seed), 2)
        batches = _batches(run, start)
        step = start
        bar = tqdm(total=config.steps, initial=start, unit="step", desc="train", smoothing=0.1)
        loss_sum, nonfinite = 0.0, 0
        try:
            while step < config.steps:
                batch = training.shard_batch(next(batches), mesh)
                state, metrics = train_step(state, batch, jax.random.fold_in(key, step))
                loss_sum = loss_sum + metrics["loss"]
                nonfinite = nonfinite + metrics["nonfinite"]
                step += 1
                bar.update(1)
                if step % config.log_every == 0 or step == config.steps:
                    n = (step - start - 1) % config.log_every + 1
                    postfix = {"loss": f"{float(loss_sum) / n:.4f}"}
                    if int(nonfinite):
                        postfix["skipped"] = int(nonfinite)
                    bar.set_postfix(postfix)
                    loss_sum = 0.0
                if step % config.checkpoint_every == 0:
                    ckpt.save(state, step)
            _save_final(ckpt, state, step)
        except KeyboardInterrupt:
            bar.close()
            _save_final(ckpt, state, step)
            raise Interrupted(
                f"interrupted at step {step}: checkpoint saved in {workdir}; continue with --resume."
            ) from None
        finally:
            bar.close()
    return state


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
    print(
        f"{config.dataset}: {ds.x_train.shape[0]} train / {ds.x_heldout.shape[0]} held-out "
        f"{ds.event_shape}; {config.process} {config.loss} ({config.prediction}); "
        f"{config.model} {size / 1e6:.2f}M params; {jax.device_count()} device(s)"
    )
    start = time.perf_counter()
    state = train(run, workdir, resume)
    print(f"trained {config.steps} steps in {time.perf_counter() - start:.1f} s")
    if not samplers and not config.eval_nll and not config.eval_vlb_points:
        return {}
    params = common.eval_params(run, state)
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
    sys.exit(main())
