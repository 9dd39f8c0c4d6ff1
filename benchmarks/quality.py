"""Sample quality against NFE with the exact score of the 8-Gaussian mixture.

Every sampler gets the exact noise prediction of `data.eight_gaussians_params()` (radius 2,
std 0.1) under the linear DDPM schedule (1000 steps, betas 1e-4..0.02) or its VP SDE
(`VPSDE.from_ddpm(1000)`), so only the discretisation is measured. diffusers' schedulers get
the same exact eps, computed in JAX and converted to torch at every step (their step `t` in
`0..999` is our step `t + 1`). Metrics on `n` samples against `n` fresh true samples: the
unbiased energy distance, and the per-mode std error (each sample assigned to its nearest
mode; per mode the pooled per-coordinate std; mean over modes of `|std / 0.1 - 1|`).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np

import diffjax as dj
from benchmarks.config import Config
from benchmarks.timing import table
from diffjax import samplers, schedules
from diffjax.data import EIGHT_GAUSSIANS_STD, eight_gaussians_params
from diffjax.distributions import GaussianMixture, exact_model
from diffjax.metrics import energy_distance

T = 1000


def mode_std_error(x, means, std: float = EIGHT_GAUSSIANS_STD) -> float:
    """Mean over modes of `|std_k / std - 1|`, samples assigned to the nearest mode."""
    x, means = np.asarray(x, np.float64), np.asarray(means, np.float64)
    nearest = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    errors = []
    for k in range(means.shape[0]):
        xk = x[nearest == k]
        if xk.shape[0] < 3:
            errors.append(1.0)  # an (almost) empty mode counts as a 100% error
            continue
        errors.append(abs(np.sqrt(np.mean(np.var(xk, axis=0, ddof=1))) / std - 1.0))
    return float(np.mean(errors))


def ours(dist, n: int) -> dict:
    """name -> `fn(key, nfe) -> (samples, actual nfe)`."""
    schedule, sde = schedules.linear(T), dj.VPSDE.from_ddpm(T)
    eps_d, eps_c = exact_model(dist, schedule, "eps"), exact_model(dist, sde, "eps")
    score = exact_model(dist, sde, "score")
    shape = (n, 2)

    def pair(out):
        return out[0], int(out[1].nfe)

    return {
        "ddim (uniform)": lambda k, m: pair(samplers.ddim(k, eps_d, shape, num_steps=m)),
        "ddim (trailing)": lambda k, m: pair(
            samplers.ddim(k, eps_d, shape, num_steps=m, grid="trailing")
        ),
        "dpm_solver order 2": lambda k, m: pair(
            samplers.dpm_solver(k, eps_c, shape, num_steps=m - 1, order=2)
        ),
        "dpm_solver order 3": lambda k, m: pair(
            samplers.dpm_solver(k, eps_c, shape, num_steps=m - 1, order=3)
        ),
        "dpm_solver SDE 2M": lambda k, m: pair(
            samplers.dpm_solver(k, eps_c, shape, num_steps=m - 1, stochastic=True)
        ),
        "unipc (bh2, order 2)": lambda k, m: pair(
            samplers.unipc(k, eps_c, shape, num_steps=m - 1, order=2)
        ),
        "unipc (bh1, order 3)": lambda k, m: pair(
            samplers.unipc(k, eps_c, shape, num_steps=m - 1, order=3, variant="bh1")
        ),
        "heun (EDM)": lambda k, m: pair(samplers.heun(k, eps_c, shape, num_steps=(m + 1) // 2)),
        "euler (EDM)": lambda k, m: pair(samplers.euler(k, eps_c, shape, num_steps=m)),
        "predictor_corrector": lambda k, m: pair(
            samplers.predictor_corrector(k, score, shape, num_steps=max((m - 1) // 2, 1))
        ),
        "ode (Heun)": lambda k, m: pair(
            samplers.ode(k, score, shape, num_steps=max((m - 1) // 2, 1))
        ),
    }


def theirs(dist, n: int) -> dict:
    """diffusers scheduler loops fed the exact eps; name -> `fn(seed, nfe) -> (samples, nfe)`."""
    import diffusers
    import torch

    eps_model = exact_model(dist, schedules.linear(T), "eps")
    eps_fn = jax.jit(lambda x, t: eps_model(x, t))
    # Euler/Heun keep x = x_0 + sigma eps (EDM's form): the exact eps at the scheduler's sigma.
    eps_edm = exact_model(dist, dj.EDM(), "eps")
    eps_sigma = jax.jit(lambda x, sigma: eps_edm(x, jnp.full(x.shape[:1], sigma)))
    kw = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)
    makers = {
        "diffusers DDIM": lambda: diffusers.DDIMScheduler(**kw, clip_sample=False),
        "diffusers DPM-Solver++ (2M)": lambda: diffusers.DPMSolverMultistepScheduler(
            **kw, algorithm_type="dpmsolver++", solver_order=2
        ),
        "diffusers DPM-Solver++ (3M)": lambda: diffusers.DPMSolverMultistepScheduler(
            **kw, algorithm_type="dpmsolver++", solver_order=3
        ),
        "diffusers SDE-DPM-Solver++ (2M)": lambda: diffusers.DPMSolverMultistepScheduler(
            **kw, algorithm_type="sde-dpmsolver++", solver_order=2
        ),
        "diffusers UniPC": lambda: diffusers.UniPCMultistepScheduler(**kw),
        "diffusers Euler (Karras sigmas)": lambda: diffusers.EulerDiscreteScheduler(
            **kw, use_karras_sigmas=True
        ),
        "diffusers Heun (Karras sigmas)": lambda: diffusers.HeunDiscreteScheduler(
            **kw, use_karras_sigmas=True
        ),
    }

    def sample(make, seed: int, nfe: int):
        scheduler = make()
        heun = isinstance(scheduler, diffusers.HeunDiscreteScheduler)
        karras = heun or isinstance(scheduler, diffusers.EulerDiscreteScheduler)
        # Heun evaluates twice per level but once at the last: `nfe` evaluations need
        # (nfe + 1) // 2 levels (N levels: 2N - 1 evaluations, as ours).
        scheduler.set_timesteps((nfe + 1) // 2 if heun else nfe)
        keyed = "generator" in inspect.signature(scheduler.step).parameters  # the SDE solvers
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 2, generator=generator) * float(getattr(scheduler, "init_noise_sigma", 1.0))
        calls = 0
        for t in scheduler.timesteps:
            if karras:
                scheduler.scale_model_input(x, t)  # sets the scheduler's step index
                sigma = float(scheduler.sigmas[scheduler.step_index])
                eps = np.asarray(eps_sigma(jnp.asarray(x.numpy()), sigma))
            else:
                eps = np.asarray(eps_fn(jnp.asarray(x.numpy()), jnp.full((n,), int(t) + 1)))
            calls += 1
            extra = {"generator": generator} if keyed else {}
            x = scheduler.step(torch.from_numpy(eps.copy()), t, x, **extra).prev_sample
        return x.numpy(), calls

    return {name: (lambda s, m, make=make: sample(make, s, m)) for name, make in makers.items()}


def run(cfg: Config, compile_rows: list) -> str:
    dist = GaussianMixture(*eight_gaussians_params())
    means = dist.means
    n = cfg.quality_n
    truth = dist.sample(jax.random.key(100), n)

    def metrics(x):
        return float(energy_distance(jnp.asarray(x), truth)), mode_std_error(x, means)

    ref = metrics(dist.sample(jax.random.key(101), n))
    methods = dict(ours(dist, n))
    try:
        methods.update(theirs(dist, n))
        skipped = ""
    except ImportError:
        skipped = " (diffusers not installed: its rows are missing)"
    results = {}  # name -> {nfe: (actual nfe, ed, std err)}
    for name, fn in methods.items():
        print(f"  quality: {name}", flush=True)
        results[name] = {}
        for m in cfg.quality_nfes:
            seed = jax.random.key(m) if not name.startswith("diffusers") else m
            x, actual = fn(seed, m)
            results[name][m] = (actual, *metrics(x))

    def cell(r):
        actual, ed, se = r
        return f"{ed:.4f} / {se:.1%} ({actual})"

    rows = [[name] + [cell(results[name][m]) for m in cfg.quality_nfes] for name in results]
    rows.append(
        [f"true samples (noise floor, {n} vs {n})"]
        + [f"{ref[0]:.4f} / {ref[1]:.1%}"] * len(cfg.quality_nfes)
    )
    summary = []
    for m in cfg.quality_nfes:
        best = {}
        for side in ("diffjax", "diffusers"):
            names = [k for k in results if k.startswith("diffusers") == (side == "diffusers")]
            if names:
                best[side] = min(names, key=lambda k, m=m: results[k][m][1])
        if len(best) == 2:
            a, b = results[best["diffjax"]][m][1], results[best["diffusers"]][m][1]
            verdict = "yes" if a <= b + max(ref[0], 0.0015) else "**no**"
            summary.append(
                [m, f"{best['diffjax']} {a:.4f}", f"{best['diffusers']} {b:.4f}", verdict]
            )
    header = ["sampler"] + [f"NFE {m}" for m in cfg.quality_nfes]
    return "\n".join(
        [
            "## 3. Quality against NFE (8 Gaussians, exact eps)",
            "",
            f"Cells: energy distance / per-mode std error (actual NFE){skipped}. {n} samples "
            f"against {n} true samples. Ours: DDIM on the discrete schedule, the rest on "
            "`VPSDE.from_ddpm(1000)` with `t_eps = 1e-3` and a final denoising step (counted "
            "in the NFE); predictor-corrector and Heun take `(NFE - 1) // 2` steps (2 "
            "evaluations each, +1); UniPC and DPM-Solver++ take NFE - 1 steps (+1 for the "
            "final denoising); EDM's Heun `(NFE + 1) // 2` levels (2N - 1 evaluations), Euler "
            "NFE levels, both on their Karras grid from the process' start. diffusers: default settings of each scheduler with "
            "`beta_schedule='linear'` (DDIM with `clip_sample=False`).",
            "",
            table(header, rows),
            "",
            "Best of each side by energy distance ('as good' = within the noise floor of the "
            "estimate):",
            "",
            table(["NFE", "best diffjax", "best diffusers", "ours at least as good"], summary),
        ]
    )
