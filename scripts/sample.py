"""Draw samples from a trained run: an `.npz` of samples and a picture.

    python scripts/sample.py --workdir outputs/eight_gaussians --sampler dpm_solver --num_steps 10
    python scripts/sample.py --workdir outputs/digits --sampler ode --label 3 --guidance 2
    python scripts/sample.py --workdir outputs/digits --sampler ddim --num_steps 50

Loads the newest verified checkpoint (EMA parameters when present, `--no-ema` for the raw
ones; the choice is printed), runs one compiled sampler call,
and writes `<out>.npz` (`samples`, and `labels` for conditional models) and `<out>.png` (a
scatter plot over held-out data for 2-D sets, an image grid for images). Conditional models
take `--label` (a class, `all` to cycle through the classes, or `none` for the null label) and
the classifier-free guidance weight `--guidance` (`guidance.classifier_free`); both are
refused for unconditional models.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import plots  # noqa: E402
from configs import SampleOptions, UsageError, parse_options, run_main  # noqa: E402

from diffjax import cache, metrics  # noqa: E402


def main(argv=None) -> int:
    return run_main(_main, argv)


def _main(argv) -> int:
    opts = parse_options(argv, SampleOptions, "sample.py", "Draw samples from a trained run.")
    if opts.guidance < 0 or opts.num_samples < 0 or opts.num_steps < 0:
        raise UsageError("--guidance, --num_samples and --num_steps must be non-negative.")
    if not 0 < opts.t_eps < 1:
        raise UsageError(f"--t_eps must lie in (0, 1), got {opts.t_eps}.")
    if opts.workdir and (opts.label or opts.guidance):
        common.check_conditional(common.read_config(opts.workdir), "--label and --guidance")
    run, params, step = common.load_run(opts.workdir, opts.ema, samplers=[opts.sampler])
    print(f"sampling with the {common.params_kind(run, opts.ema)} parameters of step {step}")
    ds = run.dataset
    num = opts.num_samples or (64 if ds.is_image else 4000)
    labels = common.labels_for(run, opts.label or "all", num)
    x, info = common.sample(
        run,
        params,
        opts.sampler,
        jax.random.key(opts.seed),
        num,
        num_steps=opts.num_steps,
        labels=labels,
        weight=opts.guidance,
        t_eps=opts.t_eps,
    )
    out = opts.out or os.path.join(opts.workdir, f"samples_{opts.sampler}")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    arrays = {"samples": x} if labels is None else {"samples": x, "labels": np.asarray(labels)}
    np.savez(out + ".npz", **arrays)
    title = f"{opts.sampler}: NFE {int(info['nfe'])}, step {step}"
    if ds.is_image:
        if labels is not None and opts.guidance:
            title += f", guidance {opts.guidance:g}"
        plots.image_panels(out + ".png", [(title, x[:100])])
    else:
        ed = float(metrics.energy_distance(x, ds.x_heldout))
        plots.scatter_panels(out + ".png", ds.x_heldout, [(f"{title}, ED {ed:.4f}", x)])
    print(
        f"{num} samples with {opts.sampler} (NFE {int(info['nfe'])}, {info['time']:.2f} s): "
        f"{out}.npz, {out}.png"
    )
    return 0


if __name__ == "__main__":
    cache.enable_compilation_cache()
    sys.exit(main())
