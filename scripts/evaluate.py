"""Evaluate a trained run: held-out likelihoods and sample quality.

    python scripts/evaluate.py --workdir outputs/eight_gaussians
    python scripts/evaluate.py --workdir outputs/digits --samplers ode,dpm_solver --vlb_points 64

Reports the negative log-likelihood of held-out data through the probability-flow ODE
(`likelihood.log_prob`; exact divergence for 2-D data, in nats per point; Hutchinson for
images, in bits per dimension of the integer data: a bound under the run's
`--eval_dequantization`, uniform or truncated-normal, stated with the result), the DDPM
variational bound (`losses.ddpm_vlb`) for models with a discrete view (see `common.py`: a VP
model is run as a `dj.Model` on `VPSDE.to_ddpm(N)` at `t = i/N`), and for each sampler its
number of network evaluations, the energy distance between its samples and held-out data
(`metrics.energy_distance`, in pixel space for images) and its run time (compilation excluded).
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import plots  # noqa: E402
from configs import EvalOptions, UsageError, parse_options, run_main  # noqa: E402

from diffjax import cache, metrics  # noqa: E402

TRAJECTORIES = 32


def parse_samplers(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        if name not in common.DEFAULT_STEPS:
            raise UsageError(
                f"unknown sampler {name!r}; choose from {', '.join(common.DEFAULT_STEPS)}."
            )
    return names


def evaluate(
    run: common.Run,
    params,
    *,
    samplers: list[str],
    num_samples: int,
    nll: bool,
    nll_points: int,
    vlb: bool,
    vlb_points: int,
    seed: int,
    weight: float = 0.0,
    figure: str = "",
    grid: str = "",
) -> dict:
    """Likelihoods and per-sampler metrics of `params`; prints a table, optionally a figure
    and (images) a grid of the first sampler's samples, one row per class for conditional
    models. Conditional models sample every class in turn with classifier-free guidance
    weight `weight`; the likelihoods are those of the unconditional (null-label) model."""
    ds = run.dataset
    key = jax.random.key(seed)
    k_nll, k_vlb, k_sample, k_traj = jax.random.split(key, 4)
    results: dict = {"samplers": {}}
    for name in samplers:
        common.check_sampler(run, name)
    panels = []
    labels = common.labels_for(run, "all", num_samples)
    for i, name in enumerate(samplers):
        x, info = common.sample(
            run,
            params,
            name,
            jax.random.fold_in(k_sample, i),
            num_samples,
            labels=labels,
            weight=weight,
        )
        ed = float(metrics.energy_distance(x, ds.x_heldout))
        row = {"nfe": int(info["nfe"]), "energy_distance": ed, "time": info["time"]}
        results["samplers"][name] = row
        panels.append((f"{name}: NFE {row['nfe']}, ED {ed:.4f}", x))
        if i == 0 and grid and ds.is_image:
            title = f"{name}, NFE {row['nfe']}"
            if labels is not None:
                title += f", one row per class, guidance w = {weight:g}"
            plots.image_panels(grid, [(title, _class_rows(x, labels))])
            results["grid"] = grid
    if "grid" in results:
        print(f"sample grid: {results['grid']}")
    if nll and run.sde is not None:
        results["pf_ode"] = common.nll(run, params, ds.x_heldout[:nll_points], k_nll)
    if vlb and run.schedule is not None:
        results["ddpm_bound"] = common.ddpm_bound(run, params, ds.x_heldout[:vlb_points], k_vlb)
    if ds.exact is not None and not ds.is_image:
        lp = np.asarray(ds.exact.log_prob(ds.x_heldout[:nll_points]))
        results["exact_nll"] = float(-lp.mean())
    if samplers:
        # Reference: training data against held-out data (the metric's noise floor).
        floor = ds.x_train[: max(num_samples, 2)]
        results["data_energy_distance"] = float(metrics.energy_distance(floor, ds.x_heldout))
    print_table(run, results)
    if figure:
        draw_figure(run, params, figure, panels, k_traj, _headline(run, results))
        print(f"figure: {figure}")
    return results


def _class_rows(x: np.ndarray, labels, cols: int = 10) -> np.ndarray:
    """Up to `cols` images of each class in class order (a grid with one row per class), or
    the first `cols^2` images of an unconditional model."""
    if labels is None:
        return x[: cols * cols]
    labels = np.asarray(labels)
    return np.concatenate([x[labels == c][:cols] for c in np.unique(labels)])


def _headline(run: common.Run, results: dict) -> str:
    c = run.config
    kind = common.model_prediction(c)
    text = f"{c.dataset}, {c.process} {c.loss} ({kind}), {c.model}, {c.steps} steps"
    if "pf_ode" in results:
        key, unit = ("bpd", "bits/dim") if run.dataset.is_image else ("nll", "nats")
        text += f"; held-out PF-ODE NLL {results['pf_ode'][key]:.3f} {unit}"
        if "bound" in results["pf_ode"]:
            text += f" ({results['pf_ode']['bound']})"
        if "exact_nll" in results:
            text += f" (exact {results['exact_nll']:.3f})"
    if "ddpm_bound" in results:
        key = "bpd" if run.dataset.is_image else "nll"
        text += f", DDPM bound {results['ddpm_bound'][key]:.3f}"
    return text


def draw_figure(run: common.Run, params, path: str, panels, key, headline: str) -> None:
    ds = run.dataset
    if ds.is_image:
        plots.image_panels(path, [("held-out data", ds.x_heldout[:100])] + panels, headline)
        return
    trajectories = None
    if run.sde is not None:
        times = np.linspace(run.sde.t_max, 1e-3, 80)
        _, info = common.sample(run, params, "ode", key, TRAJECTORIES, trajectory_times=times)
        trajectories = ("PF-ODE trajectories", info["trajectory"])
    plots.scatter_panels(path, ds.x_heldout, panels, trajectories, headline)


def print_table(run: common.Run, results: dict) -> None:
    image = run.dataset.is_image
    print(f"\n{'sampler':<12} {'NFE':>6} {'energy dist.':>13} {'time (s)':>9}")
    for name, row in results["samplers"].items():
        print(f"{name:<12} {row['nfe']:>6} {row['energy_distance']:>13.5f} {row['time']:>9.2f}")
    if "data_energy_distance" in results:
        print(f"{'(train data)':<12} {'-':>6} {results['data_energy_distance']:>13.5f} {'-':>9}")
    unit, key = ("bits/dim", "bpd") if image else ("NLL (nats)", "nll")
    for label, name in (("PF-ODE", "pf_ode"), ("DDPM bound", "ddpm_bound")):
        if name in results:
            r = results[name]
            extra = f"  (NFE {r['nfe']:.0f}, {r['time']:.1f} s incl. compile)" if "nfe" in r else ""
            print(f"{label + ' ' + unit:<22} {r[key]:.4f} +- {r[key + '_se']:.4f}{extra}")
            if "bound" in r:
                print(f"{'':<22} ({r['bound']})")
    if "exact_nll" in results:
        print(f"{'exact data NLL (nats)':<22} {results['exact_nll']:.4f}")


def main(argv=None) -> int:
    return run_main(_main, argv)


def _main(argv) -> int:
    opts = parse_options(
        argv, EvalOptions, "evaluate.py", "Likelihoods and sample metrics of a trained run."
    )
    samplers = parse_samplers(opts.samplers)
    if opts.guidance < 0:
        raise UsageError(f"--guidance must be non-negative, got {opts.guidance}.")
    if opts.workdir and opts.guidance:
        common.check_conditional(common.read_config(opts.workdir), "--guidance")
    run, params, step = common.load_run(opts.workdir, opts.ema, samplers)
    print(
        f"{opts.workdir}: step {step}, {run.config.dataset}, {run.config.process}; "
        f"{common.params_kind(run, opts.ema)} parameters"
    )
    start = time.perf_counter()
    default = 256 if run.dataset.is_image else 4000
    results = evaluate(
        run,
        params,
        samplers=samplers,
        num_samples=opts.num_samples or default,
        nll=opts.nll,
        nll_points=opts.nll_points,
        vlb=opts.vlb,
        vlb_points=opts.vlb_points,
        seed=opts.seed,
        weight=opts.guidance,
    )
    results["step"] = step
    out = opts.out or os.path.join(opts.workdir, "eval.json")
    common.write_json(out, results)
    print(f"results: {out} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    cache.enable_compilation_cache()
    sys.exit(main())
