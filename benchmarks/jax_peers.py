"""diffjax against the JAX diffusion libraries diffusionjax 0.1.8 and FlaxDiff 0.2.11.

Every library gets the exact 8-Gaussian model (`data.eight_gaussians_params()`) in the form it
takes, on the VP process with `beta` from 0.1 to 20: diffusionjax's `VP` SDE (its default,
continuous `t`), FlaxDiff's `LinearNoiseSchedule(1000)` (betas 1e-4..0.02, the same VP
discretised; its step `k` is our step `k + 1`), diffusionjax's EDM solvers a denoiser on the EDM
path (`sigma` from 0.002 to 80, their only form). Ours run on `VPSDE(0.1, 20)`. Quality: energy
distance and per-mode std error (`quality.mode_std_error`) against the same true samples, same
batch, same NFE target. Speed: the same `nets.MLP(2, hidden=(256, 256, 256))` in each library's
form, the whole sampler in `jax.jit`, against the network floor of `overhead.floors` (NFE x one
network call); FlaxDiff's `generate_samples` is a host loop over per-step jitted calls, timed
both as called and wrapped whole in `jax.jit` (it unrolls). User lines: the body of each
`_build_*` function below, which is what a user writes to sample from a given model (counted
from the source, blank lines and comments excluded).
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import textwrap
from functools import partial

import jax
import jax.numpy as jnp

import diffjax as dj
from benchmarks.config import Config
from benchmarks.overhead import floors, mlp
from benchmarks.quality import mode_std_error
from benchmarks.timing import compare, ms, table
from diffjax import samplers, schedules
from diffjax.data import eight_gaussians_params
from diffjax.distributions import GaussianMixture, exact_model
from diffjax.metrics import energy_distance

NFES = (10, 20, 50)  # quality at these NFE targets; timing at `cfg.nfe`
# Equal quality: the NFE targets swept, and the quality every library is asked to reach (energy
# distance within ~2x its 4000-sample noise of 0; modes within 10% of their width, the true
# samples' own error being 2.6%).
SWEEP = (5, 7, 9, 11, 13, 15, 19, 25, 31, 41, 51, 61, 75, 87, 101)
TARGET_ED, TARGET_STD = 0.002, 0.10
VP = dj.VPSDE(beta_min=0.1, beta_max=20.0)
EDM = dj.EDM(sigma_min=0.002, sigma_max=80.0)
DISCRETE = schedules.linear(1000)  # FlaxDiff's LinearNoiseSchedule(1000)


# ------------------------------------------------------------------ what a user writes
# Each builder takes a `dj.Model` (the exact mixture or the MLP) on the process its library
# uses, the batch shape and the NFE target, and returns `sample(key) -> x`.
def _build_ours_em(model, shape, nfe):
    return lambda key: samplers.reverse_sde(key, model, shape, num_steps=nfe - 1)[0]


def _build_ours_pc(model, shape, nfe):
    k = (nfe - 1) // 2  # 2 evaluations per step, +1 to denoise
    return lambda key: samplers.predictor_corrector(key, model, shape, num_steps=k)[0]


def _build_ours_ddim(model, shape, nfe):
    return lambda key: samplers.ddim(key, model, shape, num_steps=nfe - 1)[0]


def _build_ours_euler(model, shape, nfe):
    return lambda key: samplers.euler(key, model, shape, num_steps=nfe)[0]


def _build_ours_heun(model, shape, nfe):
    levels = (nfe + 1) // 2  # 2 evaluations per level, 1 at the last
    return lambda key: samplers.heun(key, model, shape, num_steps=levels)[0]


def _build_diffusionjax_em(model, shape, nfe):
    from diffusionjax import sde, solvers, utils

    vp = sde.VP(*utils.get_linear_beta_function(beta_min=0.1, beta_max=20.0))
    ts, _ = utils.get_times(num_steps=nfe, t0=1e-3)
    sampler = utils.get_sampler(shape, solvers.EulerMaruyama(vp.reverse(model.score), ts))
    return lambda key: sampler(key)[0]


def _build_diffusionjax_pc(model, shape, nfe):
    from diffusionjax import sde, solvers, utils

    vp = sde.VP(*utils.get_linear_beta_function(beta_min=0.1, beta_max=20.0))
    ts, _ = utils.get_times(num_steps=nfe // 2, t0=1e-3)
    predictor = solvers.EulerMaruyama(vp.reverse(model.score), ts)
    corrector = solvers.Annealed(vp.reverse(model.score), snr=0.16, ts=jnp.zeros((1, 1)))
    sampler = utils.get_sampler(shape, predictor, corrector)
    # Annealed takes `pmean` over the axis "batch": run under pmap or a named vmap.
    return lambda key: jax.vmap(sampler, axis_name="batch")(key[None])[0][0]


def _build_diffusionjax_ddim(model, shape, nfe):
    from diffusionjax import solvers, utils

    beta, _ = utils.get_linear_beta_function(beta_min=0.1, beta_max=20.0)
    ts, _ = utils.get_times(num_steps=nfe, t0=1e-3)
    sampler = utils.get_sampler(shape, solvers.DDIMVP(model.eps, eta=0.0, beta=beta, ts=ts))
    return lambda key: sampler(key)[0]


def _build_diffusionjax_euler(model, shape, nfe):
    from diffusionjax import solvers, utils

    # get_sampler fails on EDMEuler (its update returns `None` as the mean): loop by hand.
    solver = solvers.EDMEuler(model.x0, ts=utils.get_times(num_steps=nfe, t0=0.0)[0])

    def sample(key):
        def step(x, tk):
            t, k = tk
            return solver.update(k, x, jnp.full(shape[:1], t))[0], None

        keys = jax.random.split(key, nfe + 1)
        xs = (solver.ts.ravel(), keys[1:])
        return jax.lax.scan(step, solver.prior(keys[0], shape), xs, reverse=True)[0]

    return sample


def _build_diffusionjax_heun(model, shape, nfe):
    from diffusionjax import solvers, utils

    solver = solvers.EDMHeun(model.x0, ts=utils.get_times(num_steps=nfe // 2, t0=0.0)[0])
    # denoise=True returns the Euler half of the last step (its Heun half divides by sigma=0).
    return lambda key: utils.get_sampler(shape, solver, denoise=True)(key)[0]


def _flaxdiff_sampler(cls, model):
    from flaxdiff import predictors, schedulers
    from flaxdiff.inputs import DiffusionInputConfig

    class Net:  # FlaxDiff calls `model.apply(params, x, t)` on [B, H, W, C] images
        def apply(self, params, x, t):
            t = jnp.minimum(t.astype(jnp.int32), 999) + 1  # its step 1000 reads rate 999
            return model.eps(x.reshape(x.shape[0], -1), t).reshape(x.shape)

    sampler = cls(
        Net(), schedulers.LinearNoiseSchedule(1000, beta_start=1e-4, beta_end=0.02),
        predictors.EpsilonPredictionTransform(),
        DiffusionInputConfig(sample_data_key="x", sample_data_shape=(1, 1, 2), conditions=[]),
    )  # fmt: skip
    sampler.post_process = lambda x: x  # the default clips to the image range [-1, 1]
    return sampler


def _flaxdiff_sample(sampler, shape, steps):
    def sample(key):
        prior = jax.random.normal(key, (shape[0], 1, 1, *shape[1:]))
        x = sampler.generate_samples(None, shape[0], None, diffusion_steps=steps, priors=prior)
        return x.reshape(shape)

    return sample


def _build_flaxdiff_ddim(model, shape, nfe):
    from flaxdiff.samplers import DDIMSampler

    return _flaxdiff_sample(_flaxdiff_sampler(DDIMSampler, model), shape, nfe)


def _build_flaxdiff_euler(model, shape, nfe):
    from flaxdiff.samplers import EulerSampler

    return _flaxdiff_sample(_flaxdiff_sampler(EulerSampler, model), shape, nfe)


def _build_flaxdiff_heun(model, shape, nfe):
    from flaxdiff.samplers import HeunSampler

    steps = (nfe + 1) // 2  # 2 evaluations per step, 1 for the last (x0)
    return _flaxdiff_sample(_flaxdiff_sampler(HeunSampler, model), shape, steps)


# family -> library -> (builder, process of its model, helpers its user lines include)
CASES = {
    "Euler-Maruyama (reverse SDE)": {
        "diffjax": (_build_ours_em, VP, ()),
        "diffusionjax": (_build_diffusionjax_em, VP, ()),
    },
    "predictor-corrector (1 Langevin step)": {
        "diffjax": (_build_ours_pc, VP, ()),
        "diffusionjax": (_build_diffusionjax_pc, VP, ()),
    },
    "DDIM (eta = 0)": {
        "diffjax": (_build_ours_ddim, VP, ()),
        "diffusionjax": (_build_diffusionjax_ddim, VP, ()),
        "FlaxDiff": (_build_flaxdiff_ddim, DISCRETE, (_flaxdiff_sampler, _flaxdiff_sample)),
    },
    "Euler (PF-ODE)": {
        "diffjax": (_build_ours_euler, VP, ()),
        "diffusionjax": (_build_diffusionjax_euler, EDM, ()),
        "FlaxDiff": (_build_flaxdiff_euler, DISCRETE, (_flaxdiff_sampler, _flaxdiff_sample)),
    },
    "Heun (PF-ODE)": {
        "diffjax": (_build_ours_heun, VP, ()),
        "diffusionjax": (_build_diffusionjax_heun, EDM, ()),
        "FlaxDiff": (_build_flaxdiff_heun, DISCRETE, (_flaxdiff_sampler, _flaxdiff_sample)),
    },
}
PACKAGES = {"diffusionjax": "diffusionjax", "FlaxDiff": "flaxdiff"}


def user_lines(*fns) -> int:
    """Code lines in the bodies of `fns`: no blank lines, comments or docstrings."""
    count = 0
    for fn in fns:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        body = tree.body[0].body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]
        lines = textwrap.dedent(inspect.getsource(fn)).splitlines()
        code = lines[body[0].lineno - 1 : body[-1].end_lineno]
        count += sum(1 for line in code if line.strip() and not line.strip().startswith("#"))
    return count


def counted(model):
    """`(model', calls)`: `model` (eps view) whose evaluations add 1 to `calls[0]` as they run."""
    calls = [0]

    def tick():
        calls[0] += 1

    def eps(x, t):
        jax.debug.callback(tick)
        return model.eps(x, t)

    return dj.Model(eps, model.process, "eps"), calls


def _quiet(fn):
    """`fn` with FlaxDiff's prints and progress bars swallowed."""

    def call(*args):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return fn(*args)

    return call


def _available(cases: dict) -> tuple[dict, list[str]]:
    missing = []
    for lib, package in PACKAGES.items():
        try:
            __import__(package)
        except ImportError:
            missing.append(f"{lib} ({package} not installed)")
    gone = {m.split(" ")[0] for m in missing}
    kept = {fam: {lib: c for lib, c in libs.items() if lib not in gone} for fam, libs in cases.items()}
    return {fam: libs for fam, libs in kept.items() if len(libs) > 1}, missing


def run(cfg: Config, compile_rows: list) -> str:
    cases, missing = _available(CASES)
    title = "## 2b. Against the JAX diffusion libraries (diffusionjax, FlaxDiff)"
    if not cases:
        return (
            f"{title}\n\nSkipped: {', '.join(missing)} (`make bench` installs the `bench` "
            "extra into `benchmarks/.venv-bench`)."
        )
    dist = GaussianMixture(*eight_gaussians_params())
    n, nfes = cfg.quality_n, ((cfg.nfe,) if cfg.quick else NFES)
    truth = dist.sample(jax.random.key(100), n)
    key = jax.random.key(0)

    targets = sorted(set(nfes) | (set() if cfg.quick else set(SWEEP)))
    quality_rows, measured = [], {}  # (family, lib, target) -> (actual NFE, ED, std error)
    for family, libs in cases.items():
        for lib, (build, process, _) in libs.items():
            print(f"  jax_peers quality: {family}, {lib}", flush=True)
            for m in targets:
                model, calls = counted(exact_model(dist, process, "eps"))
                x = jax.jit(_quiet(build(model, (n, 2), m)))(key)
                ed = float(energy_distance(x, truth))
                measured[family, lib, m] = (calls[0], ed, mode_std_error(x, dist.means))
            cells = [
                f"{e:.4f} / {s:.1%} ({a})" for a, e, s in (measured[family, lib, m] for m in nfes)
            ]
            quality_rows.append([family, lib, *cells])
    ref = dist.sample(jax.random.key(101), n)
    floor_q = float(energy_distance(ref, truth))
    quality_rows.append(
        ["true samples (noise floor)", "-"]
        + [f"{floor_q:.4f} / {mode_std_error(ref, dist.means):.1%}"] * len(nfes)
    )

    apply, params = mlp()
    network_floor, _ = floors(apply)
    shape, m = (cfg.batch, 2), cfg.nfe
    x_floor = jax.random.normal(jax.random.key(1), shape)
    speed_rows, per_eval = [], {}  # (family, lib) -> seconds per evaluation in jit
    for family, libs in cases.items():
        for lib, (build, process, extra) in libs.items():
            print(f"  jax_peers speed: {family}, {lib}", flush=True)
            nfe = measured[family, lib, m][0]
            # Built on the host (diffusionjax checks its time grid with Python asserts).
            sample = _quiet(build(dj.Model(apply, process, "eps", params=params), shape, m))
            fns = {
                "floor": lambda nfe=nfe: network_floor(params, x_floor, nfe),
                "jit": partial(jax.jit(sample), key),
            }
            if lib == "FlaxDiff":  # its documented call is a host loop, not one program
                fns["as called"] = partial(sample, key)
            res = compare(fns, cfg.repeats)
            fl, jit = res["floor"][0].median, res["jit"][0]
            compile_rows.append((f"jax_peers: {family}, {lib}", jit.compile))
            called = res.get("as called")
            per_eval[family, lib] = jit.median / nfe
            speed_rows.append(
                [
                    family, lib, nfe, ms(fl), ms(jit.median), f"{jit.median / fl:.2f}",
                    f"{ms(called[0].median)} ({called[0].median / fl:.1f}x)" if called else "-",
                    f"{jit.compile:.2f} s", user_lines(build, *extra),
                ]
            )  # fmt: skip
    equal_rows = [] if cfg.quick else equal_quality(cases, measured, per_eval)
    return _section(cfg, title, nfes, quality_rows, speed_rows, equal_rows, missing)


def reaches_target(cells: list[tuple[int, float, float]]):
    """The first `(NFE, ED, std error)` of `cells` (sorted by NFE) from which on every cell meets
    the target (`TARGET_ED`, `TARGET_STD`), or None: a sampler that dips below the target and
    leaves it again at a larger NFE has not reached it."""
    reached = None
    for cell in cells:
        ok = cell[1] <= TARGET_ED and cell[2] <= TARGET_STD
        reached = (reached or cell) if ok else None
    return reached


def equal_quality(cases, measured, per_eval) -> list[list]:
    """Rows: the NFE from which each library's sampler holds the target quality, and the time
    that costs at the speed-table batch (seconds per evaluation in `jit` x NFE)."""
    rows = []
    for family, libs in cases.items():
        for lib in libs:
            cells = sorted(v for (f, lb, _), v in measured.items() if (f, lb) == (family, lib))
            hit = reaches_target(cells)
            if hit is None:
                rows.append([family, lib, f"not by {cells[-1][0]}", "-", "-"])
                continue
            nfe, ed, err = hit
            rows.append(
                [family, lib, nfe, f"{ed:.4f} / {err:.1%}", ms(nfe * per_eval[family, lib])]
            )
    return rows


def _section(cfg, title, nfes, quality_rows, speed_rows, equal_rows, missing) -> str:
    import importlib.metadata as md

    versions = ", ".join(
        f"{p} {md.version(p)}" for p in ("diffusionjax", "flaxdiff") if p not in str(missing)
    )
    skipped = f" Not run: {', '.join(missing)}." if missing else ""
    return "\n".join(
        [
            title,
            "",
            f"{versions}, jax {jax.__version__}.{skipped} Each library gets the exact 8-Gaussian "
            "model in the form it takes: diffusionjax's `VP` SDE (`beta` 0.1..20), FlaxDiff's "
            "`LinearNoiseSchedule(1000)` (the same VP discretised; points fed as `[B, 1, 1, 2]` "
            "images, since its Euler/Heun broadcast rates as `[-1, 1, 1, 1]`, and its clip to "
            "`[-1, 1]` replaced), diffusionjax's EDM solvers a denoiser on the EDM path "
            "(`sigma` 0.002..80, the only form they take). Ours: `VPSDE(0.1, 20)`, defaults "
            "(log-SNR grid for the SDE samplers, Karras grid for Euler/Heun, final denoising "
            "step counted in the NFE). Neither peer has a general PF-ODE solver on VP "
            "(diffusionjax's `probability_flow` is a placeholder; FlaxDiff's RK4 needs a VE "
            "schedule): their Euler/Heun are the PF-ODE rows.",
            "",
            f"Quality: energy distance / per-mode std error (actual NFE), {cfg.quality_n} "
            "samples against the same true samples.",
            "",
            table(["sampler", "library"] + [f"NFE {m}" for m in nfes], quality_rows),
            "",
            f"Speed with the MLP (`MLP(2, hidden=(256, 256, 256))`), batch {cfg.batch}, NFE "
            f"target {cfg.nfe}, medians of {cfg.repeats} interleaved runs. Floor: the network "
            "NFE times in one jitted `lax.scan`. 'in jit': the sampler built on the host and "
            "wrapped in `jax.jit` (parameters closed over, for every library). 'as called': FlaxDiff's `generate_samples` as its "
            "docs call it (a Python loop over per-step jitted calls). Compile: first jitted call "
            "minus the steady median. User lines: code lines a user writes from a given model "
            "to samples (the `_build_*` functions of `benchmarks/jax_peers.py`).",
            "",
            table(
                ["sampler", "library", "NFE", "floor", "in jit", "jit / floor", "as called",
                 "compile", "user lines"],
                speed_rows,
            ),  # fmt: skip
        ]
        + (
            [
                "",
                f"Equal quality: the NFE (of the sweep {', '.join(map(str, SWEEP))}, actual "
                f"NFE shown) from which on each sampler holds energy distance <= {TARGET_ED} "
                f"and per-mode std error <= {TARGET_STD:.0%}, the quality there, and its time "
                "at the speed table's batch (time per evaluation in jit x NFE).",
                "",
                table(
                    ["sampler", "library", "NFE to target", "quality there", "time there"],
                    equal_rows,
                ),
            ]
            if equal_rows
            else []
        )
    )
