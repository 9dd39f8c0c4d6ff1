"""Configurations for the scripts: dataclasses, named presets, and `--field value` parsing.

Each dataclass field is one command-line option (`--field value`; booleans also take
`--no-field`; tuples are comma-separated, `--hidden 256,256`). Its help text lives in the
field's metadata, so `--help` lists every option with its default. Config objects never enter
the library: the scripts turn them into plain arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field


class UsageError(Exception):
    """A bad command line, configuration, or missing file: one line on stderr, exit code 2."""


def opt(default, help: str, *, choices=None, resume_free: bool = False):
    """A dataclass field carrying its command-line help (and whether `--resume` may change it)."""
    meta = {"help": help, "choices": choices, "resume_free": resume_free}
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


SDES = ("vp", "subvp", "ve", "edm", "rectified_flow", "cosine_path")
"""Continuous processes (`dsm`, `flow_matching` and `edm` losses); `cosine_path` is `dj.Cosine`,
the continuous cosine path (`cosine` is the DDPM schedule of Nichol & Dhariwal, kept for
existing runs)."""
SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v", "score", "velocity")
"""Network outputs; `velocity` (flow matching) needs a continuous process."""
LOSSES = ("dsm", "ddpm", "flow_matching", "edm")
"""Training objectives (`diffjax.losses`): only `ddpm` trains on a schedule."""
SAMPLERS = ("ddpm", "ddim", "reverse_sde", "pc", "ode", "dpm_solver")


@dataclass(frozen=True)
class Config:
    """A training run (`scripts/train.py`); stored as `config.json` next to the checkpoints.

    The defaults are the recipe measured best for the demo budget (benchmarks/RESULTS.md,
    section 5b): EDM's preconditioned denoiser and loss (Karras et al. 2022,
    arXiv:2206.00364) on the EDM path, sigma_data 0.5, the MLP fed c_noise unscaled.
    """

    # data
    dataset: str = opt(
        "eight_gaussians",
        "eight_gaussians | two_moons | swiss_roll | checkerboard | two_class (2-D), "
        "digits (8x8, bundled), npz:<path> (local MNIST/CIFAR .npz), or shards:<dir> "
        "(streamed, from scripts/make_shards.py; the first --num_heldout held out)",
    )
    num_train: int = opt(100_000, "training points drawn once (2-D sets)")
    num_heldout: int = opt(4000, "held-out points (2-D: fresh draws; images: split off)")
    conditional: bool = opt(False, "class-conditional model (two_class, digits, labelled npz)")
    label_dropout: float = opt(0.1, "probability of the null label in training (classifier-free)")
    dequantize: bool = opt(True, "images: add uniform noise one grey level wide to training data")
    # forward process
    process: str = opt(
        "edm",
        "continuous process (vp, subvp, ve, edm, rectified_flow, cosine_path) or DDPM schedule "
        "(linear, cosine)",
        choices=SDES + SCHEDULES,
    )
    beta_min: float = opt(0.1, "VP/sub-VP beta(0)")
    beta_max: float = opt(20.0, "VP/sub-VP beta(T)")
    sigma_min: float = opt(0.01, "VE/EDM sigma_min")
    sigma_max: float = opt(
        10.0, "VE/EDM sigma_max (about the data's largest pairwise distance; EDM: T)"
    )
    num_timesteps: int = opt(1000, "DDPM steps T (schedules; VP models use it for ddpm/ddim/bound)")
    beta_start: float = opt(1e-4, "linear schedule beta_1")
    beta_end: float = opt(0.02, "linear schedule beta_T")
    # loss
    loss: str = opt(
        "edm",
        "dsm (continuous processes), ddpm (schedules), flow_matching (continuous; a velocity "
        "network) or edm (continuous; EDM's preconditioned denoiser)",
        choices=LOSSES,
    )
    prediction: str = opt(
        "auto",
        "network output; auto: velocity for flow_matching, x0 for edm, else eps "
        "(velocity: continuous processes only)",
        choices=("auto", *PREDICTIONS),
    )
    weighting: str = opt(
        "auto",
        "dsm weighting; auto: snr (unit weight on the eps error) for score prediction and "
        "for v on VE, whose targets are unbounded, else simple",
        choices=("auto", "simple", "likelihood", "snr", "min_snr"),
    )
    importance_sampling: bool = opt(
        False,
        "dsm with --weighting likelihood: draw t with density g^2/sigma^2 and reweight "
        "(Song et al. 2021)",
    )
    time_sampling: str = opt(
        "uniform", "flow_matching training times", choices=("uniform", "logit_normal")
    )
    logit_mean: float = opt(0.0, "flow_matching logit-normal times: mean of logit(t)")
    logit_std: float = opt(1.0, "flow_matching logit-normal times: std of logit(t)")
    sigma_data: float = opt(0.5, "edm: the data's standard deviation in the preconditioning")
    p_mean: float = opt(-1.2, "edm: mean of log sigma in training")
    p_std: float = opt(1.2, "edm: std of log sigma in training")
    train_t_eps: float = opt(1e-5, "smallest training time (dsm, flow_matching)")
    # model
    model: str = opt("mlp", "mlp (vectors) or unet (images)", choices=("mlp", "unet"))
    hidden: tuple = opt((256, 256, 256), "mlp hidden widths")
    embed_dim: int = opt(128, "mlp time-embedding width")
    time_embedding: str = opt("sinusoidal", "time embedding", choices=("sinusoidal", "fourier"))
    time_scale: float = opt(
        0.0,
        "t multiplier before embedding; 0: 1 for the edm loss (its network sees log(sigma)/4), "
        "1000/T for other continuous processes, 1 for steps",
    )
    channels: int = opt(32, "unet base channels")
    channel_mults: tuple = opt((1, 2), "unet channel multiplier per level")
    num_res_blocks: int = opt(1, "unet residual blocks per level")
    attention_levels: tuple = opt((-1,), "unet levels with self-attention ('' for none)")
    dtype: str = opt(
        "float32",
        "network compute dtype, training and sampling (parameters and samplers stay float32)",
        choices=("float32", "bfloat16"),
        resume_free=True,
    )
    # optimisation
    optimizer: str = opt("adam", "optimiser", choices=("adam", "adamw"))
    lr: float = opt(3e-3, "peak learning rate")
    warmup_steps: int = opt(100, "linear learning-rate warm-up steps")
    lr_decay_steps: int = opt(
        3000,
        "cosine decay of the learning rate to 0 at this step, warm-up included (0: constant); "
        "raise it with --steps",
    )
    grad_clip: float = opt(1.0, "global gradient-norm clip (0: off)")
    weight_decay: float = opt(1e-4, "adamw weight decay")
    batch_size: int = opt(512, "global batch size (divisible by the device count)")
    steps: int = opt(3000, "total training steps", resume_free=True)
    ema_decay: float = opt(0.999, "EMA decay of the parameters (0: no EMA)")
    seed: int = opt(0, "random seed (data, initialisation, training noise)")
    # bookkeeping
    log_every: int = opt(100, "progress-bar update interval (steps)", resume_free=True)
    checkpoint_every: int = opt(1000, "checkpoint interval (steps)", resume_free=True)
    keep_checkpoints: int = opt(3, "checkpoints kept", resume_free=True)
    sample_every: int = opt(
        0, "sample figure samples/step_N.png (and TensorBoard) every N steps (0: off)",
        resume_free=True,
    )
    ema: bool = opt(
        True,
        "evaluate, sample and save (model/) the EMA parameters; --no-ema: the raw ones",
        resume_free=True,
    )
    # evaluation at the end of training (scripts/evaluate.py runs it on its own)
    eval_samplers: str = opt(
        "reverse_sde,ode", "comma-separated samplers to evaluate ('' to skip)", resume_free=True
    )
    eval_samples: int = opt(4000, "samples per sampler", resume_free=True)
    eval_nll: bool = opt(True, "held-out NLL / bits-per-dim through the PF-ODE", resume_free=True)
    eval_nll_points: int = opt(1000, "held-out points for the NLL", resume_free=True)
    eval_t_eps: float = opt(1e-5, "start time of the PF-ODE likelihood", resume_free=True)
    eval_dequantization: str = opt(
        "uniform",
        "images: dequantization of the bits/dim bound: uniform noise on the bin, or the "
        "process' noise at eval_t_eps truncated to the bin (truncated_normal)",
        choices=("uniform", "truncated_normal"),
        resume_free=True,
    )
    eval_vlb_points: int = opt(
        0, "held-out points for the DDPM bound (0: skip; costs T network passes)", resume_free=True
    )
    eval_guidance: float = opt(
        0.0, "classifier-free guidance weight of the evaluation samples", resume_free=True
    )


@dataclass(frozen=True)
class SampleOptions:
    """`scripts/sample.py`: draw samples from a trained run."""

    workdir: str = opt("", "run directory (config.json and checkpoints/)")
    sampler: str = opt("ode", "sampler", choices=SAMPLERS)
    num_steps: int = opt(0, "sampler steps (0: the sampler's default; ode: adaptive)")
    num_samples: int = opt(0, "number of samples (0: 4000 for 2-D, 64 for images)")
    guidance: float = opt(0.0, "classifier-free guidance weight w (conditional models)")
    label: str = opt(
        "", "conditional models: a class, 'all' (cycle classes, the default) or 'none'"
    )
    t_eps: float = opt(1e-3, "final time of the continuous samplers")
    ema: bool = opt(True, "use the EMA parameters when the checkpoint has them")
    seed: int = opt(0, "random seed")
    out: str = opt("", "output prefix (default <workdir>/samples_<sampler>): .png and .npz")


@dataclass(frozen=True)
class EvalOptions:
    """`scripts/evaluate.py`: likelihoods and sample metrics of a trained run."""

    workdir: str = opt("", "run directory (config.json and checkpoints/)")
    samplers: str = opt("reverse_sde,ode,dpm_solver", "comma-separated samplers ('' to skip)")
    num_samples: int = opt(0, "samples per sampler (0: 4000 for 2-D, 256 for images)")
    guidance: float = opt(0.0, "classifier-free guidance weight of the samples (conditional)")
    nll: bool = opt(True, "PF-ODE NLL (2-D, exact divergence) / bits per dim (Hutchinson)")
    nll_points: int = opt(1000, "held-out points for the NLL and the DDPM bound")
    vlb: bool = opt(True, "DDPM variational bound (VP SDE or linear/cosine schedule models)")
    vlb_points: int = opt(256, "held-out points for the DDPM bound (it costs T network passes)")
    ema: bool = opt(True, "use the EMA parameters when the checkpoint has them")
    seed: int = opt(0, "random seed")
    out: str = opt("", "write the results as JSON here (default <workdir>/eval.json)")


PRESETS: dict[str, dict] = {
    "eight_gaussians": {},
    # The default recipe, EDM on the edm path (sigma_data 0.5, c_noise unscaled), was chosen
    # at this budget among eps-DSM on VP, EDM (sigma_data 0.5 / 1.4, time_scale 1 / 25 / 250 /
    # 1000) and flow matching on rectified_flow (uniform / logit-normal times), two seeds each
    # (benchmarks/RESULTS.md, section 5b; `python -m benchmarks.recipes`). Against eps-DSM its
    # per-mode std ratio is 1.35-1.40 vs 1.56 with DPM-Solver at 10 steps, 1.20 vs 1.34 at 20,
    # 1.07 vs 1.15 with the adaptive PF-ODE, and its held-out NLL is 0.01-0.03 nats lower at
    # 1/6 of the NFE; eps-DSM has the lower energy distance with Heun at 10 steps. Flow
    # matching was the worst at 10 steps.
    "demo": {
        "hidden": (128, 128, 128),
        "steps": 3000,
        "log_every": 250,
        "sample_every": 1000,
        "eval_samplers": "reverse_sde,ode,dpm_solver",
        "eval_nll_points": 2000,
    },
    "two_class": {"dataset": "two_class", "conditional": True},
    # Likelihood-oriented (issue 13; benchmarks/digits_recipes.py, RESULTS.md section 4b):
    # eps-DSM on VP with the likelihood weighting g^2/sigma^2 and importance-sampled times
    # (Song et al. 2021, arXiv:2101.09258) on [6.1e-3, 1], trained on the 17 levels themselves
    # (no dequantization noise), and bits/dim bounded with truncated-normal dequantization at
    # the same t_eps (sigma = 0.031: the bin's half-width is 2 sigma; Zheng et al. 2023,
    # arXiv:2305.03935), a valid bound on the discrete NLL like the uniform one. Label dropout
    # 0.5, since the likelihood is the null-label model's; lr 4e-3 for 4000 steps. Measured
    # on the 128 held-out images (two shared CPU cores, seed 0; seed 1: 1.866 +- 0.026 after
    # 525 CPU s): 1.877 +- 0.028 bits/dim
    # after 537 CPU s (560 s wall) of training (2.100 +- 0.023 with uniform dequantization
    # from t_eps 1e-5; 1.946 +- 0.029 truncated normal at t_eps 4.4e-3; the flowjax flow of
    # section 4c: 2.05 +- 0.03); guided samples labelled as the requested digit 1.00. The
    # same on [4.4e-3, 1], bounded at 4.4e-3 (the previous default): 1.922 +- 0.029 (2.172
    # uniform), 566 CPU s. The old recipe
    # (simple weighting, uniform dequantization, label dropout 0.1, lr 1e-3, 3000 steps, 427
    # CPU s): 2.25 +- 0.03 (uniform), 2.41 (truncated normal). Underfitting, not overfitting:
    # the old recipe scored 2.23 on 128 training images. What makes sampling work (as in
    # benchmarks/digits_guidance.py): a small U-Net (16 channels, no attention, 0.16M
    # parameters), cosine decay and an EMA of 0.999; with lr 2e-4, 32 channels and attention,
    # 600 steps left rms eps errors 0.1-0.2 at t = T, which DPM-Solver's x0 prediction
    # multiplies by std / mean_coeff ~ 150: samples at |x| ~ 100. The DDPM bound is off: the
    # network is not trained below t = 6.1e-3, the first steps of the 1000-step chain.
    "digits": {
        "dataset": "digits",
        "process": "vp",
        "loss": "dsm",
        "prediction": "eps",
        "weighting": "likelihood",
        "importance_sampling": True,
        "train_t_eps": 6.1e-3,
        "dequantize": False,
        "num_heldout": 297,
        "model": "unet",
        "conditional": True,
        "label_dropout": 0.5,
        "channels": 16,
        "attention_levels": (),
        "batch_size": 128,
        "lr": 4e-3,
        "steps": 4000,
        "warmup_steps": 200,
        "lr_decay_steps": 4000,
        "ema_decay": 0.999,
        "checkpoint_every": 1000,
        "log_every": 100,
        "eval_samplers": "dpm_solver",
        "eval_samples": 100,
        "eval_guidance": 3.0,
        "eval_nll_points": 128,
        "eval_t_eps": 6.1e-3,
        "eval_dequantization": "truncated_normal",
        "eval_vlb_points": 0,
    },
}
"""Named starting points for `--config`; every field can still be overridden."""


# ----------------------------------------------------------------------------- parsing


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line (no usage block) and raises `UsageError`."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def _parse_tuple(text: str) -> tuple:
    text = text.strip().strip("()")
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def _add_fields(parser: argparse.ArgumentParser, cls, defaults) -> None:
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name)
        meta = f.metadata
        name = "--" + f.name
        if isinstance(default, bool):
            pair = parser.add_mutually_exclusive_group()
            pair.add_argument(
                name,
                dest=f.name,
                action="store_true",
                default=default,
                help=f"{meta['help']} (default: {default}; --no-{f.name} to unset)",
            )
            pair.add_argument(
                f"--no-{f.name}", dest=f.name, action="store_false", help=argparse.SUPPRESS
            )
            continue
        kind = _parse_tuple if isinstance(default, tuple) else type(default)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            name,
            type=kind,
            default=default,
            choices=meta["choices"],
            metavar=f.name.upper() if meta["choices"] is None else None,
            help=f"{meta['help']} (default: {shown})",
        )


def make_parser(prog: str, description: str, cls, defaults) -> argparse.ArgumentParser:
    """An argument parser with one `--field` per field of the dataclass `cls`."""
    parser = _Parser(prog=prog, description=description, allow_abbrev=False)
    _add_fields(parser, cls, defaults)
    return parser


def parse_options(argv, cls, prog: str, description: str):
    """Parse `argv` into an instance of the options dataclass `cls`."""
    parser = make_parser(prog, description, cls, cls())
    ns = parser.parse_args(argv)
    return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)})


def parse_train_args(argv) -> tuple[Config, argparse.Namespace]:
    """`(config, run options)` from the command line of `train.py`.

    `--config NAME` picks a preset (its values become the defaults shown by `--help`); the
    other options override single fields.
    """
    pre = _Parser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default="eight_gaussians", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    preset = Config(**PRESETS[known.config])
    parser = _Parser(
        allow_abbrev=False,
        prog="train.py",
        description="Train a diffusion model, checkpoint it, and evaluate it at the end.",
    )
    run = parser.add_argument_group("run")
    run.add_argument(
        "--config",
        default="eight_gaussians",
        choices=sorted(PRESETS),
        help="preset whose values are the defaults below (default: eight_gaussians)",
    )
    run.add_argument("--workdir", default="", help="run directory (default: outputs/<config>)")
    run.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --workdir"
    )
    run.add_argument(
        "--overwrite", action="store_true", help="delete existing checkpoints in --workdir first"
    )
    run.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: call jax.distributed.initialize() first",
    )
    run.add_argument(
        "--figure", default="", help="summary figure path (default: <workdir>/summary.png)"
    )
    _add_fields(parser.add_argument_group("configuration"), Config, preset)
    ns = parser.parse_args(argv)
    config = Config(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(Config)})
    given = {arg.split("=")[0].removeprefix("--").removeprefix("no-") for arg in argv}
    ns.explicit = {f.name for f in dataclasses.fields(Config) if f.name in given}
    ns.explicit |= {"config"} & given
    if not ns.workdir:
        ns.workdir = f"outputs/{ns.config}"
    return config, ns


def resumed_config(saved: Config, config: Config, explicit: set[str]) -> Config:
    """The configuration of a resumed run: the saved one with the options given explicitly
    on the command line (all of `config` when `--config` itself was given)."""
    if "config" in explicit:
        return config
    return dataclasses.replace(saved, **{name: getattr(config, name) for name in explicit})


# ----------------------------------------------------------------------------- JSON


def config_to_json(config: Config) -> str:
    return json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True)


def config_from_json(text: str, path: str = "config.json") -> Config:
    try:
        values = json.loads(text)
        names = {f.name for f in dataclasses.fields(Config)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return Config(**values)
    except (ValueError, TypeError) as err:
        raise UsageError(f"{path} is not a valid configuration: {err}") from err


def config_mismatch(saved: Config, new: Config) -> list[str]:
    """Fields that differ and may not change on `--resume`, as `name: saved -> new`."""
    return [
        f"{f.name}: {getattr(saved, f.name)!r} -> {getattr(new, f.name)!r}"
        for f in dataclasses.fields(Config)
        if not f.metadata["resume_free"] and getattr(saved, f.name) != getattr(new, f.name)
    ]


def run_main(main, argv=None) -> int:
    """Run `main(argv)`; a `UsageError` becomes one line on stderr and exit code 2."""
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
