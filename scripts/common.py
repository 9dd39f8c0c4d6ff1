"""Shared pieces of the scripts: data, model, forward process, checkpoints, model views.

A run is described by a `configs.Config`. `build(config)` turns it into a `Run`: the data
(train and held-out), the network as a pure `apply(params, x, t[, y])`, the forward process
the model was trained with, and its two *views*, each a `dj.Model` (`Run.model`: the network,
its parameters, a process, the prediction kind and a time map from the view's time to the
network's):

- continuous (`Run.sde`, any continuous process): reverse SDE, PC, PF-ODE, DPM-Solver, the
  likelihood, and DDIM for models without a discrete view;
- discrete (`Run.schedule`, a DDPM schedule, integer `i` in `1..N`): DDPM, DDIM, the DDPM bound.

A model trained on the VP SDE is used as a discrete model on `VPSDE.to_ddpm(N)`, the linear
schedule with `beta_i = beta(i/N) / N`, by calling it at `t = i T / N`: the schedule's
`alpha_bar_i = prod_{j<=i} (1 - beta_j) = exp(-int_0^{i/N} beta) (1 + O(1/N))` matches the
SDE's `mean_coeff(t)^2`, so the network's `eps(x_t, t)` is the right noise estimate at step
`i`. Conversely a model trained on a linear DDPM schedule is a continuous VP model on
`VPSDE.from_ddpm(N, beta_start, beta_end)`, called at `i = t N / T` (a fractional step, which
the sinusoidal time embedding accepts). Sub-VP, VE, EDM, rectified-flow and cosine-path models
and velocity predictions have no discrete view, cosine schedules no continuous one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import warnings
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from configs import SCHEDULES, SDES, Config, UsageError, config_from_json
from flax import nnx

import diffjax as dj
from diffjax import data, guidance, likelihood, losses, nets, samplers, training
from diffjax.pretrained import TimeScale

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
MODEL_DIR = "model"
TOY_SETS = {
    "eight_gaussians": data.eight_gaussians,
    "two_moons": data.two_moons,
    "swiss_roll": data.swiss_roll,
    "checkerboard": data.checkerboard,
    "two_class": data.two_class,
}


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and held-out arrays (NumPy, on the host) and what the evaluation needs to know.

    `levels`: number of grey levels of image data mapped to `[-1, 1]` (`None` for 2-D);
    `exact`: the data's exact density when known (a `GaussianMixture`), for reference NLLs;
    `shards`: for `shards:<dir>`, the directory the training examples stream from (examples
    `num_heldout..N-1`, `num_train` of them); `x_train` then holds only the first
    `SHARD_HEAD` of them, for the metrics' noise floor.
    """

    x_train: np.ndarray
    y_train: np.ndarray | None
    x_heldout: np.ndarray
    y_heldout: np.ndarray | None
    num_classes: int | None
    levels: int | None
    exact: Any = None
    shards: str | None = None
    num_shard_train: int = 0

    @property
    def num_train(self) -> int:
        return self.x_train.shape[0] if self.shards is None else self.num_shard_train

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.levels is not None

    @property
    def data_interval(self) -> tuple[float, float]:
        """The continuous range `[lo, hi)` whose `levels` equal bins are centred on the
        levels `-1, -1 + d, ..., 1` (`d = 2 / (levels - 1)`): `(-1 - d/2, 1 + d/2)`."""
        half = 1.0 / (self.levels - 1)
        return (-1.0 - half, 1.0 + half)


def _split(key, x, y, num_heldout: int):
    n = x.shape[0]
    if not 0 < num_heldout < n:
        raise UsageError(
            f"--num_heldout must lie in 1..{n - 1} for this data set, got {num_heldout}."
        )
    perm = np.asarray(jax.random.permutation(key, n))
    train, held = perm[num_heldout:], perm[:num_heldout]
    return x[train], None if y is None else y[train], x[held], None if y is None else y[held]


def load_data(config: Config) -> Dataset:
    """The data set of `config`: 2-D sets drawn from `seed` (held-out from another key),
    images split by a fixed permutation. Rows with NaN or inf are refused (`UsageError`
    with their count and first indices)."""
    dataset = _load_data(config)
    for part, x in (("training", dataset.x_train), ("held-out", dataset.x_heldout)):
        try:
            data.check_finite(x, f"{config.dataset} {part} data")
        except ValueError as err:
            raise UsageError(str(err)) from err
    return dataset


def _load_data(config: Config) -> Dataset:
    key_train, key_held = jax.random.split(jax.random.key(config.seed))
    name = config.dataset
    if name in TOY_SETS:
        draw = TOY_SETS[name]
        train, held = draw(key_train, config.num_train), draw(key_held, config.num_heldout)
        exact = None
        if name == "eight_gaussians":
            exact = dj.GaussianMixture(*data.eight_gaussians_params())
        if name == "two_class":
            (x, y), (xh, yh) = train, held
            exact = dj.GaussianMixture(*data.two_class_params()[:3])
            return Dataset(*map(np.asarray, (x, y, xh, yh)), 2, None, exact)
        return Dataset(np.asarray(train), None, np.asarray(held), None, None, None, exact)
    if name == "digits":
        x, y = data.digits()
        levels = 17
    elif name.startswith("npz:"):
        try:
            x, y = data.load_npz(name[4:])
        except (FileNotFoundError, ValueError) as err:
            raise UsageError(str(err)) from err
        levels = 256
    elif name.startswith("shards:"):
        return _load_shards(name[7:], config.num_heldout)
    else:
        raise UsageError(
            f"--dataset must be one of {sorted(TOY_SETS)}, digits, npz:<path> or "
            f"shards:<dir>, got {name!r}."
        )
    x, y = np.asarray(x), None if y is None else np.asarray(y)
    parts = _split(jax.random.key(0), x, y, config.num_heldout)
    num_classes = None if y is None else int(y.max()) + 1
    return Dataset(*parts, num_classes, levels)


SHARD_HEAD = 4096
"""Training examples of a `shards:<dir>` data set read into memory (the metrics' floor)."""


def _load_shards(directory: str, num_heldout: int) -> Dataset:
    """`shards:<dir>` (written by `pipeline.write_shards` or `scripts/make_shards.py`, which
    shuffles): the first `num_heldout` examples held out, the rest streamed in training.
    Field `x`: images `[H, W, C]` in `[-1, 1]` from 256 grey levels, or vectors `[D]`;
    optional `y`: integer labels."""
    from diffjax import pipeline

    try:
        index = pipeline._read_index(os.path.abspath(directory))
        num = index["num_examples"]
        fields = index["fields"]
        if "x" not in fields or len(fields["x"]["shape"]) not in (1, 3):
            raise ValueError(
                f"shards:{directory} needs a field 'x' of images [H, W, C] or vectors [D], "
                f"has {dict((k, v['shape']) for k, v in fields.items())}."
            )
        if not 0 < num_heldout < num:
            raise UsageError(
                f"--num_heldout must lie in 1..{num - 1} for this data set, got {num_heldout}."
            )
        held = pipeline.read_examples(directory, 0, num_heldout)
        head = pipeline.read_examples(directory, num_heldout, min(num, num_heldout + SHARD_HEAD))
        labels = None
        if "y" in fields:
            labels = pipeline.read_examples(directory, 0, num, fields=["y"])["y"]
    except ValueError as err:
        raise UsageError(str(err).splitlines()[0]) from err
    num_classes = None
    if labels is not None:
        if not np.issubdtype(labels.dtype, np.integer) or labels.ndim != 1 or labels.min() < 0:
            raise UsageError(f"shards:{directory}: field 'y' must hold labels 0, 1, ... [N].")
        num_classes = int(labels.max()) + 1
    levels = 256 if held["x"].ndim == 4 else None
    return Dataset(
        head["x"], head.get("y"), held["x"], held.get("y"), num_classes, levels,
        shards=os.path.abspath(directory), num_shard_train=num - num_heldout,
    )  # fmt: skip


# ----------------------------------------------------------------------------- process, model


def make_process(config: Config):
    """The forward process the model is trained with: a continuous process or a DDPM schedule."""
    if config.process == "vp":
        return dj.VPSDE(config.beta_min, config.beta_max)
    if config.process == "subvp":
        return dj.SubVPSDE(config.beta_min, config.beta_max)
    if config.process == "ve":
        return dj.VESDE(config.sigma_min, config.sigma_max)
    if config.process == "edm":
        return dj.EDM(config.sigma_min, config.sigma_max)
    if config.process == "rectified_flow":
        return dj.RectifiedFlow()
    if config.process == "cosine_path":
        return dj.Cosine()
    if config.process == "linear":
        return dj.schedules.linear(config.num_timesteps, config.beta_start, config.beta_end)
    return dj.schedules.cosine(config.num_timesteps)


def model_prediction(config: Config) -> str:
    """What the trained model predicts: `--prediction`, or for `auto` the loss's own kind
    (velocity for flow_matching, x0 for edm, whose preconditioned denoiser estimates x_0,
    else eps). Explicit values are stored in older `config.json` files and kept."""
    if config.prediction != "auto":
        return config.prediction
    return {"flow_matching": "velocity", "edm": "x0"}.get(config.loss, "eps")


EDM_TIME_SCALE = 25.0
"""The `time_scale` for the edm loss, whose network sees `c_noise = log(sigma) / 4` (about
-1.2..0.6 in training, Karras et al. 2022) times this. With the demo MLP (benchmarks/RESULTS.md,
section 5b), 25 gave a 0.01-0.02 nats lower held-out NLL than 1 on two seeds at the same NFE of
the NLL solve, and with the cosine learning rate of the default recipe the lowest NLL of all
(+0.017 / +0.023 nats over the exact one); 250 and 1000 cost 3x and 6x the NFE."""


def default_time_scale(config: Config, process) -> float:
    """`--time_scale`, or for 0: `EDM_TIME_SCALE` for the edm loss, `1000 / T` for other
    continuous processes (so that `t` in `[0, T]` spans DDPM's 1000 steps), 1 for steps."""
    if config.time_scale:
        return config.time_scale
    if config.loss == "edm":
        return EDM_TIME_SCALE
    return 1000.0 / process.T if isinstance(process, dj.AbstractProcess) else 1.0


def check_config(config: Config, dataset: Dataset) -> None:
    """Combinations the library cannot train, reported before anything is compiled."""
    if config.loss != "ddpm" and config.process not in SDES:
        raise UsageError(
            f"--loss {config.loss} needs a continuous process ({', '.join(SDES)}), "
            f"got {config.process}; schedules train with --loss ddpm."
        )
    if config.loss == "ddpm" and config.process not in SCHEDULES:
        raise UsageError(
            f"--loss ddpm needs a schedule ({', '.join(SCHEDULES)}), got {config.process}."
        )
    prediction = model_prediction(config)
    if prediction == "velocity" and config.process in SCHEDULES:
        raise UsageError(
            f"--prediction velocity needs a continuous process ({', '.join(SDES)}), "
            f"got {config.process}."
        )
    if config.loss == "flow_matching" and config.prediction not in ("auto", "velocity"):
        raise UsageError(
            f"--loss flow_matching trains a velocity network: pass --prediction velocity "
            f"(or auto), not {config.prediction}."
        )
    if config.loss == "edm" and config.prediction not in ("auto", "x0"):
        raise UsageError(
            f"--loss edm trains EDM's preconditioned denoiser, an x0 model: pass --prediction "
            f"x0 (or auto), or --loss dsm for --prediction {config.prediction}."
        )
    if config.loss in ("ddpm", "flow_matching") and config.weighting not in ("auto", "simple"):
        raise UsageError(
            f"--weighting applies to --loss dsm only; the {config.loss} loss is unweighted."
        )
    if config.loss == "edm" and config.weighting != "auto":
        raise UsageError(
            "--weighting applies to --loss dsm only; the edm loss has EDM's own weighting "
            "(set --p_mean, --p_std)."
        )
    if config.importance_sampling and (
        config.loss != "dsm" or dsm_weighting(config) != "likelihood"
    ):
        raise UsageError("--importance_sampling needs --loss dsm and --weighting likelihood.")
    for name in ("logit_std", "sigma_data", "p_std", "eval_t_eps"):
        if not getattr(config, name) > 0:
            raise UsageError(f"--{name} must be positive, got {getattr(config, name)}.")
    if config.time_scale < 0:
        raise UsageError(f"--time_scale must be >= 0, got {config.time_scale}.")
    if config.loss == "ddpm" and prediction == "score":
        raise UsageError(
            "--prediction score with --loss ddpm does not train: the unweighted targets "
            "-eps/sigma_t reach 1/sqrt(beta_1); use eps, x0 or v (or an SDE with --loss dsm)."
        )
    if config.loss == "dsm" and prediction == "score" and config.weighting == "simple":
        raise UsageError(
            "--prediction score with --weighting simple does not train: the targets -eps/sigma "
            "grow to 1/sigma at small t and dominate the loss; use --weighting snr (the "
            "default, auto) or likelihood."
        )
    if config.model == "mlp" and dataset.is_image:
        raise UsageError(f"--model mlp is for vectors; use --model unet for {config.dataset}.")
    if config.model == "unet" and not dataset.is_image:
        raise UsageError(f"--model unet is for images; use --model mlp for {config.dataset}.")
    if config.conditional and dataset.num_classes is None:
        raise UsageError(f"--conditional needs labels; {config.dataset} has none.")
    if config.batch_size > dataset.num_train:
        raise UsageError(
            f"--batch_size {config.batch_size} exceeds the {dataset.num_train} training examples."
        )
    for name in ("steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints"):
        if getattr(config, name) < 1:
            raise UsageError(f"--{name} must be >= 1, got {getattr(config, name)}.")
    for name in ("lr_decay_steps", "eval_vlb_points", "sample_every"):
        if getattr(config, name) < 0:
            raise UsageError(f"--{name} must be >= 0, got {getattr(config, name)}.")
    if config.eval_guidance < 0:
        raise UsageError(f"--eval_guidance must be >= 0, got {config.eval_guidance}.")
    if not 0 <= config.ema_decay < 1 or not 0 <= config.label_dropout <= 1:
        raise UsageError("--ema_decay must lie in [0, 1) and --label_dropout in [0, 1].")


def make_network(config: Config, dataset: Dataset, process) -> nnx.Module:
    """The network (a `diffjax.nets` module), initialised from `seed`."""
    time_scale = default_time_scale(config, process)
    num_classes = dataset.num_classes if config.conditional else None
    rngs = nnx.Rngs(config.seed)
    common = dict(
        time_embedding=config.time_embedding,
        time_scale=time_scale,
        num_classes=num_classes,
        dtype=config.dtype,
        rngs=rngs,
    )
    try:
        if config.model == "mlp":
            (dim,) = dataset.event_shape
            net = nets.MLP(dim, hidden=config.hidden, embed_dim=config.embed_dim, **common)
        else:
            net = nets.UNet(
                dataset.event_shape[-1],
                channels=config.channels,
                channel_mults=config.channel_mults,
                num_res_blocks=config.num_res_blocks,
                attention_levels=config.attention_levels,
                **common,
            )
    except (TypeError, ValueError) as err:
        raise UsageError(f"invalid model options: {err}") from err
    return net


def learning_rate(config: Config) -> optax.Schedule:
    """Linear warm-up, then a constant learning rate or (`lr_decay_steps > 0`) a cosine decay
    to 0 at step `lr_decay_steps`: the rate of the update after `k` updates."""
    warmup = max(config.warmup_steps, 1)
    if config.lr_decay_steps > 0:
        return optax.warmup_cosine_decay_schedule(
            0.0, config.lr, warmup, max(config.lr_decay_steps, warmup + 1)
        )
    return optax.linear_schedule(0.0, config.lr, warmup)


def make_optimizer(config: Config) -> optax.GradientTransformation:
    """Adam or AdamW at `learning_rate(config)`; optional global-norm clipping."""
    lr = learning_rate(config)
    if config.optimizer == "adam":
        opt = optax.adam(lr)
    else:
        opt = optax.adamw(lr, weight_decay=config.weight_decay)
    if config.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.grad_clip), opt)
    return opt


def dsm_weighting(config: Config) -> str:
    """The DSM weighting of `config`. `--weighting auto` is `snr` (unit weight on
    `||eps_hat - eps||^2`) where the network's own target is unbounded: score prediction,
    whose target `-eps/sigma` grows to `1/sigma_min` (`snr` is `sigma^2` on the score error),
    v prediction on VE and EDM, whose target `alpha eps - sigma x0` grows to `sigma_max |x0|`,
    and velocity prediction on VE, whose target `sigma' eps` grows like `sigma_max`;
    `simple` (the network's own target, unweighted) otherwise."""
    if config.weighting != "auto":
        return config.weighting
    prediction = model_prediction(config)
    unbounded = prediction == "score" or (prediction, config.process) in (
        ("v", "ve"),
        ("v", "edm"),
        ("velocity", "ve"),
    )
    return "snr" if unbounded else "simple"


def make_loss_fn(config: Config, dataset: Dataset, apply, process):
    """`loss_fn(params, batch, key) -> (loss, metrics)` for `training.make_train_step`:
    `losses.dsm`, `ddpm`, `flow_matching` (Lipman et al. 2023, arXiv:2210.02747; logit-normal
    times of Esser et al. 2024, arXiv:2403.03206) or `edm` (Karras et al. 2022,
    arXiv:2206.00364), as `config.loss` says.

    `batch` is `x` or `(x, y)` for conditional models; labels are replaced by the null label
    (`num_classes`) with probability `label_dropout` (classifier-free guidance). Image data is
    dequantised with uniform noise one grey level wide, centred on the level.
    """
    null = dataset.num_classes
    step = None if dataset.levels is None else 2.0 / (dataset.levels - 1)
    prediction = model_prediction(config)

    def loss_fn(params, batch, key):
        k_loss, k_drop, k_deq = jax.random.split(key, 3)
        x, y = batch if config.conditional else (batch, None)
        if step is not None and config.dequantize:
            x = x + step * (jax.random.uniform(k_deq, x.shape, x.dtype) - 0.5)
        if y is not None:
            y = guidance.drop_labels(k_drop, y, config.label_dropout, null)
        if config.loss == "ddpm":
            return losses.ddpm(params, apply, k_loss, x, process, labels=y, prediction=prediction)
        if config.loss == "flow_matching":
            return losses.flow_matching(
                params,
                apply,
                k_loss,
                x,
                process,
                labels=y,
                time_sampling=config.time_sampling,
                logit_mean=config.logit_mean,
                logit_std=config.logit_std,
                t_eps=config.train_t_eps,
            )
        if config.loss == "edm":
            return losses.edm(
                params,
                apply,
                k_loss,
                x,
                process,
                labels=y,
                sigma_data=config.sigma_data,
                p_mean=config.p_mean,
                p_std=config.p_std,
            )
        return losses.dsm(
            params,
            apply,
            k_loss,
            x,
            process,
            labels=y,
            prediction=prediction,
            weighting=dsm_weighting(config),
            t_eps=config.train_t_eps,
            importance_sampling=config.importance_sampling,
        )

    return loss_fn


# ----------------------------------------------------------------------------- the run


class WithLabels(eqx.Module):
    """`model(x, t, labels)` with the labels (a scalar or `[B]`) bound: `fn(x, t)`."""

    model: dj.Model
    labels: Any

    def __call__(self, x, t):
        return self.model(x, t, jnp.broadcast_to(self.labels, x.shape[:1]))


@dataclasses.dataclass
class Run:
    """Everything built from a config: data, network, optimiser, process and its views.

    `network` is the `diffjax.nets` module (for `dj.save_pretrained`), `apply, init_params`
    its `nets.split`."""

    config: Config
    dataset: Dataset
    network: nnx.Module
    apply: Any
    init_params: Any
    optimizer: Any
    process: Any
    sde: Any  # continuous view (dj.AbstractProcess) or None
    schedule: Any  # discrete view (DiscreteSchedule) or None

    @property
    def ema_decay(self) -> float | None:
        return self.config.ema_decay or None

    def initial_state(self) -> training.TrainState:
        return training.create_train_state(
            self.init_params, self.optimizer, ema_decay=self.ema_decay
        )

    def network_model(self, params, *, discrete: bool = False) -> dj.Model:
        """The network with `params` as a `dj.Model` on the continuous view `self.sde` or,
        with `discrete`, on the discrete view `self.schedule` (see the module docstring);
        a conditional network's model takes the labels, `model(x, t, labels)`.

        An edm run's network takes `(x_in, c_noise[, labels])`: its model is the x0 denoiser
        `dj.edm_model` builds (on the discrete view: the same denoiser called at `t = i T / N`).
        """
        process = self.schedule if discrete else self.sde
        if process is None:
            kind = "discrete" if discrete else "continuous"
            raise UsageError(f"a {self.config.process} model has no {kind} view.")
        time_map = None
        if process is not self.process:  # the time of the view -> the network's time
            if discrete:  # a VP model at t = i T / N
                time_map = TimeScale(self.process.T / process.num_steps)
            else:  # a linear-schedule model at i = t N / T
                time_map = TimeScale(self.process.num_steps / process.T)
        if self.config.loss == "edm":  # the raw network under EDM's preconditioning
            edm = dj.edm_model(
                self.apply, self.process, sigma_data=self.config.sigma_data, params=params
            )
            model = dj.Model(edm.fn, process, "x0", params=params, time_map=time_map)
        else:
            prediction = model_prediction(self.config)
            model = dj.Model(self.apply, process, prediction, params=params, time_map=time_map)
        return model

    def model(self, params, *, discrete: bool = False, label=None, weight: float = 0.0) -> dj.Model:
        """`network_model(params, discrete=discrete)` taking `(x, t)` only: conditional models
        get `label` (an int, `[B]` labels, or `None` for the null label) and, with
        `weight > 0`, classifier-free guidance of that weight (`dj.classifier_free`)."""
        model = self.network_model(params, discrete=discrete)
        if not self.config.conditional:
            return model
        if label is None or (isinstance(weight, (int, float)) and weight == 0):
            labels = self.dataset.num_classes if label is None else label
            return dj.Model(
                WithLabels(model, jnp.asarray(labels, jnp.int32)), model.process, model.prediction
            )
        return dj.classifier_free(model, label, self.dataset.num_classes, weight)


def build(config: Config) -> Run:
    """Data, network, optimiser and process of `config` (no training, no checkpoint);
    `UsageError` for combinations that cannot be trained."""
    dataset = load_data(config)
    check_config(config, dataset)
    process = make_process(config)
    network = make_network(config, dataset, process)
    apply, params = nets.split(network)
    sde = schedule = None
    if isinstance(process, dj.AbstractProcess):
        sde = process
        # A velocity (dx/dt of the PF-ODE) has no meaning on a discrete chain.
        if isinstance(process, dj.VPSDE) and model_prediction(config) != "velocity":
            schedule = process.to_ddpm(config.num_timesteps)
    else:
        schedule = process
        if config.process == "linear":
            sde = dj.VPSDE.from_ddpm(config.num_timesteps, config.beta_start, config.beta_end)
    optimizer = make_optimizer(config)
    return Run(config, dataset, network, apply, params, optimizer, process, sde, schedule)


def read_config(workdir: str) -> Config:
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"no {CONFIG_FILE} in {workdir!r}: is it a training run directory?")
    with open(path) as f:
        return config_from_json(f.read(), path)


def restore(run: Run, workdir: str, like=None) -> tuple[int, training.TrainState]:
    """`(step, state)` of the newest checkpoint of `workdir` that verifies, shaped like `like`
    (default: a fresh state). Each newer checkpoint that fails its checksum or cannot be read
    is skipped with a `warning:` line on stderr; a clear `UsageError` when none is usable."""
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    if not os.path.isdir(directory):
        raise UsageError(f"no checkpoints in {workdir!r} (expected {directory}).")
    like = run.initial_state() if like is None else like
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with training.Checkpointer(directory, create=False) as ckpt:
                return ckpt.restore_newest_valid(like)
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err).splitlines()[0]) from err
    finally:
        for w in caught:
            if str(w.message).startswith("skipping checkpoint"):
                print(f"warning: {w.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def save_model(run: Run, params, path: str) -> str:
    """`dj.save_pretrained` of the run's network with `params` to `path`: the model on the
    continuous view (the discrete one for cosine-schedule models), before labels are bound;
    `dj.load(path)` gives it back."""
    model = run.network_model(params, discrete=run.sde is None)
    return dj.save_pretrained(path, model, run.network)


def params_kind(run: Run, use_ema: bool = True) -> str:
    """Which parameters `eval_params` returns: `"EMA (decay d)"` or `"raw"`."""
    return f"EMA (decay {run.config.ema_decay:g})" if use_ema and run.ema_decay else "raw"


def eval_params(run: Run, state: training.TrainState, use_ema: bool = True):
    """The parameters to evaluate: the EMA (when trained with one and `use_ema`) or the raw
    parameters. The EMA's warm-up decay (`training.ema_warmup_decay`) keeps it close to the
    trained parameters even after a short run, so it needs no bias correction."""
    if use_ema and state.ema_params is not None:
        return state.ema_params
    return state.params


def load_run(workdir: str, use_ema: bool = True, samplers=()) -> tuple[Run, Any, int]:
    """`(run, params, step)` of a trained run, from its newest verified checkpoint: the EMA
    parameters when present and `use_ema` (`eval_params`). `samplers` are checked against the
    model (`check_sampler`) before the checkpoint is read."""
    if not workdir:
        raise UsageError("--workdir is required.")
    config = read_config(workdir)
    if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
        raise UsageError(f"no checkpoints in {workdir!r}: train first (scripts/train.py).")
    run = build(config)
    for name in samplers:
        check_sampler(run, name)
    step, state = restore(run, workdir)
    return run, eval_params(run, state, use_ema), step


# ----------------------------------------------------------------------------- sampling

DEFAULT_STEPS = {"ddpm": 0, "ddim": 50, "reverse_sde": 500, "pc": 250, "ode": 0, "dpm_solver": 20}
"""Default step counts; 0 means all `T` steps (ddpm) or adaptive steps (ode)."""


def check_sampler(run: Run, sampler: str) -> None:
    """ddpm needs the discrete view; ddim takes either (the discrete one when there is one);
    the others need the continuous view."""
    if sampler == "ddpm" and run.schedule is None:
        raise UsageError(
            "sampler ddpm needs a discrete schedule: use a vp (not velocity-predicting), "
            "linear or cosine model."
        )
    if sampler not in ("ddpm", "ddim") and run.sde is None:
        raise UsageError(
            f"sampler {sampler} needs a continuous process: cosine-schedule models use ddpm/ddim."
        )


def check_conditional(config: Config, options: str) -> None:
    """`UsageError` when `options` (label, guidance) are given for an unconditional run."""
    if not config.conditional:
        raise UsageError(f"{options} need a conditional model; this run is unconditional.")


def labels_for(run: Run, label: str, num: int):
    """Labels for sampling: `None` (null label / unconditional), or an int array `[num]`."""
    if not run.config.conditional or label == "none":
        return None
    classes = run.dataset.num_classes
    if label == "all":
        return jnp.arange(num, dtype=jnp.int32) % classes
    try:
        value = int(label)
    except ValueError:
        raise UsageError(f"--label must be 'all', 'none' or a class, got {label!r}.") from None
    if not 0 <= value < classes:
        raise UsageError(f"--label must lie in 0..{classes - 1}, got {value}.")
    return jnp.full((num,), value, jnp.int32)


def make_sampler(
    run: Run,
    sampler: str,
    num: int,
    *,
    num_steps: int = 0,
    weight: float = 0.0,
    t_eps: float = 1e-3,
    trajectory_times=None,
):
    """A jitted `draw(params, key, labels) -> (samples [num, *event], SamplerInfo)` of a
    `diffjax.samplers` sampler, compiled once for every call with the same shapes.

    `trajectory_times` also returns `info.trajectory` (see `diffjax.samplers`). ddim runs on
    the discrete view when the model has one, else on the continuous view (log-SNR grid from
    the process' `t_max` to `t_eps`).
    """
    check_sampler(run, sampler)
    shape = (num, *run.dataset.event_shape)
    steps = num_steps or DEFAULT_STEPS[sampler]
    save = None if trajectory_times is None else np.asarray(trajectory_times)

    # Labels are an argument (not a closure constant): the compiled call can be reused and
    # guidance's label checks see a tracer.
    discrete = sampler == "ddpm" or (sampler == "ddim" and run.schedule is not None)

    @jax.jit
    def draw(params, key, labels):
        model = run.model(params, discrete=discrete, label=labels, weight=weight)
        if sampler == "ddpm":
            return samplers.ddpm(key, model, shape, save_times=save)
        if sampler == "ddim":
            times = {} if discrete else {"t_eps": t_eps}
            return samplers.ddim(key, model, shape, num_steps=steps, save_times=save, **times)
        if sampler == "dpm_solver":
            return samplers.dpm_solver(
                key, model, shape, num_steps=steps, t_eps=t_eps, save_times=save
            )
        if sampler == "reverse_sde":
            return samplers.reverse_sde(
                key, model, shape, num_steps=steps, t_eps=t_eps, save_times=save
            )
        if sampler == "pc":
            return samplers.predictor_corrector(
                key, model, shape, num_steps=steps, t_eps=t_eps, save_times=save
            )
        adaptive = None if steps else diffrax.PIDController(rtol=1e-3, atol=1e-3)
        return samplers.ode(
            key,
            model,
            shape,
            num_steps=steps or None,
            stepsize_controller=adaptive,
            t_eps=t_eps,
            save_times=save,
        )

    return draw


def sample(run: Run, params, sampler: str, key, num: int, *, labels=None, **options):
    """`(samples [num, *event], info)` from one compiled call of `make_sampler(run, sampler,
    num, **options)`; `info` is a dict of the `SamplerInfo` fields (`nfe`, `num_steps`, ...)
    and `time` (seconds, compilation excluded)."""
    draw = make_sampler(run, sampler, num, **options)
    compiled = draw.lower(params, key, labels).compile()
    start = time.perf_counter()
    x, info = jax.block_until_ready(compiled(params, key, labels))
    info = {**jax.tree.map(np.asarray, info)._asdict(), "time": time.perf_counter() - start}
    return np.asarray(x), info


# ----------------------------------------------------------------------------- likelihoods



def nll(
    run: Run, params, x, key, *, batch: int = 500, dequantization: str = "", t_eps: float = 0.0
) -> dict[str, float]:
    """Held-out negative log-likelihood through the PF-ODE (`likelihood.log_prob`).

    2-D data: exact divergence, mean NLL in nats. Images: Hutchinson divergence (one
    Rademacher probe) from `t_eps` (default `config.eval_t_eps`), reported in bits per
    dimension (`likelihood.bits_per_dim` with the data's grey levels and interval) of the
    bound on the discrete NLL under `dequantization` (default `config.eval_dequantization`):
    `"uniform"` (`likelihood.dequantize`) or `"truncated_normal"`
    (`likelihood.truncated_normal_dequantize` at `t_eps`), named in `out["bound"]`.
    """
    ds, config = run.dataset, run.config
    dequantization = dequantization or config.eval_dequantization
    t_eps = t_eps or config.eval_t_eps
    divergence = likelihood.Hutchinson(num_probes=1) if ds.is_image else likelihood.Exact()
    controller = diffrax.PIDController(rtol=1e-4, atol=1e-4, norm=dj.likelihood.per_example_max_rms)

    @jax.jit
    def logp(params, x, key):
        # The marginal p(x): conditional models are evaluated with the null label.
        lp, info = likelihood.log_prob(
            run.model(params, label=None),
            x,
            key=key,
            divergence=divergence,
            stepsize_controller=controller,
            t_eps=t_eps,
        )
        return lp, info["nfe"]

    values, nfes = [], []
    start_time = time.perf_counter()
    for i, start in enumerate(range(0, x.shape[0], batch)):
        xb = jnp.asarray(x[start : start + batch])
        k_deq, k_probe = jax.random.split(jax.random.fold_in(key, i))
        log_q = 0.0
        if ds.is_image:
            ints = jnp.round((xb + 1.0) * (ds.levels - 1) / 2.0)
            levels = dict(data_range=ds.levels, data_interval=ds.data_interval)
            if dequantization == "truncated_normal":
                xb, log_q = likelihood.truncated_normal_dequantize(
                    k_deq, ints, run.sde, t_eps, **levels
                )
            else:
                xb = likelihood.dequantize(k_deq, ints, **levels)
        lp, nfe = logp(params, xb, k_probe)
        values.append(np.asarray(lp - log_q))
        nfes.append(int(nfe))
    lp = np.concatenate(values)
    out = {"nfe": float(np.mean(nfes)), "time": time.perf_counter() - start_time}
    if ds.is_image:
        bpd = likelihood.bits_per_dim(
            lp, ds.event_shape, data_range=ds.levels, data_interval=ds.data_interval
        )
        out["bpd"] = float(np.mean(bpd))
        out["bpd_se"] = float(np.std(bpd) / math.sqrt(bpd.size))
        out["bound"] = f"{dequantization} dequantization, PF-ODE from t_eps {t_eps:g}"
    else:
        out["nll"] = float(-lp.mean())
        out["nll_se"] = float(lp.std() / math.sqrt(lp.size))
    return out


def ddpm_bound(run: Run, params, x, key, *, batch: int = 128) -> dict[str, float]:
    """The DDPM variational bound (`losses.ddpm_vlb`) on the discrete view of the model.

    2-D: nats per point. Images: the bound on dequantised data, in bits per dimension of the
    integer data (the same conversion as the PF-ODE number).
    """
    ds = run.dataset
    dim = math.prod(ds.event_shape)

    @jax.jit
    def bound(params, x, key):
        return losses.ddpm_vlb(run.model(params, discrete=True, label=None), key, x)

    nats = []
    for i, start in enumerate(range(0, x.shape[0], batch)):
        xb = jnp.asarray(x[start : start + batch])
        k_deq, k_vlb = jax.random.split(jax.random.fold_in(key, i))
        if ds.is_image:
            ints = jnp.round((xb + 1.0) * (ds.levels - 1) / 2.0)
            xb = likelihood.dequantize(
                k_deq, ints, data_range=ds.levels, data_interval=ds.data_interval
            )
        nats.append(np.asarray(bound(params, xb, k_vlb)) * dim * math.log(2.0))
    nats = np.concatenate(nats)
    if ds.is_image:
        bpd = likelihood.bits_per_dim(
            -nats, ds.event_shape, data_range=ds.levels, data_interval=ds.data_interval
        )
        return {"bpd": float(np.mean(bpd)), "bpd_se": float(np.std(bpd) / math.sqrt(bpd.size))}
    return {"nll": float(nats.mean()), "nll_se": float(nats.std() / math.sqrt(nats.size))}


def write_json(path: str, values: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
