"""PF-ODE likelihood: diffjax's one compiled solve against a host `scipy.integrate.solve_ivp`
loop, state layout, bits/dim on 8x8 digits, compile time and peak memory.

The scipy reference is the approach of the original score-SDE code: RK45 on the host at the
same tolerances, calling one jitted function that returns the drift and its exact divergence
for the whole batch (the state `(x, delta_logp)` flattened to float64 between calls).
"""

from __future__ import annotations

import functools
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from scipy.integrate import solve_ivp

import diffjax as dj
from benchmarks.config import Config
from benchmarks.overhead import _exact_divergence
from benchmarks.timing import compare, measure, ms, table
from diffjax import losses, nets, training
from diffjax.data import digits, eight_gaussians_params
from diffjax.distributions import GaussianMixture, exact_model
from diffjax.likelihood import Exact, Hutchinson, bits_per_dim, dequantize, log_prob

RTOL = ATOL = 1e-5
T_EPS = 1e-5


def scipy_log_prob(model: dj.Model, tol: float = RTOL, prior_log_prob_fn=None):
    """`fn(x) -> (logp [B], nfe)`: RK45 on the host over a jitted drift + exact divergence.

    The drift is the process' `probability_flow_drift` at the model's score (not the library's
    velocity form). The jitted field is made once here, so only the first call of `fn` compiles it.
    `tol` is scipy's rtol = atol; `prior_log_prob_fn` replaces the process' prior.
    """
    sde = model.process
    prior = sde.prior_log_prob if prior_log_prob_fn is None else prior_log_prob_fn

    @jax.jit
    def field(t, x):
        drift = lambda y: sde.probability_flow_drift(model.score(y, t), y, t)
        return _exact_divergence(drift, x)

    def fn(x):
        batch, dim = x.shape

        def rhs(t, y):
            x_t = jnp.asarray(y[: batch * dim], jnp.float32).reshape(batch, dim)
            dx, div = field(jnp.asarray(t, jnp.float32), x_t)
            return np.concatenate([np.asarray(dx).ravel(), np.asarray(div)]).astype(np.float64)

        y0 = np.concatenate([np.asarray(x, np.float64).ravel(), np.zeros(batch)])
        sol = solve_ivp(rhs, (T_EPS, sde.T), y0, method="RK45", rtol=tol, atol=tol)
        z, delta = sol.y[: batch * dim, -1].reshape(batch, dim), sol.y[batch * dim :, -1]
        return np.asarray(prior(jnp.asarray(z, jnp.float32))) + delta, sol.nfev

    return fn


def random_mixture(key, event_shape, k: int = 10, std: float = 0.3) -> GaussianMixture:
    means = jax.random.uniform(key, (k, *event_shape), minval=-1.0, maxval=1.0)
    return GaussianMixture(jnp.full((k,), 1 / k), means, jnp.full((k,), std))



def _controller(tol: float):
    return diffrax.PIDController(rtol=tol, atol=tol, norm=dj.likelihood.per_example_max_rms)


def _nll_fn(model, divergence, key=None, tol: float = RTOL, **kwargs):
    controller = _controller(tol)
    return jax.jit(
        lambda x: log_prob(
            model, x, key=key, divergence=divergence, stepsize_controller=controller, **kwargs
        )
    )


def _per_example_fn(model, tol: float = RTOL, **kwargs):
    """`jax.vmap` of single-example exact solves: each example takes its own steps."""
    controller = _controller(tol)

    def one(xi):
        logp, info = log_prob(
            model, xi[None], divergence=Exact(), stepsize_controller=controller, **kwargs
        )
        return logp[0], {"nfe": info["nfe"]}

    return jax.jit(jax.vmap(one))


def _memory(compiled) -> str:
    stats = compiled.memory_analysis()
    if stats is None:
        return "n/a"
    mib = lambda b: f"{b / 2**20:.1f} MiB"
    return (
        f"temp {mib(stats.temp_size_in_bytes)}, arguments {mib(stats.argument_size_in_bytes)}, "
        f"output {mib(stats.output_size_in_bytes)}"
    )


def two_d(cfg: Config, compile_rows: list) -> list[str]:
    sde = dj.VPSDE()
    dist = GaussianMixture(*eight_gaussians_params())
    score = exact_model(dist, sde)
    x = dist.sample(jax.random.key(0), cfg.nll_points)
    probe_key = jax.random.key(1)
    exact, hutch = _nll_fn(score, Exact()), _nll_fn(score, Hutchinson(), probe_key)
    vmapped = _per_example_fn(score)
    scipy_fn = scipy_log_prob(score)
    print("  likelihood: 2-D, diffjax vs scipy", flush=True)
    res = compare(
        {
            "exact": lambda: exact(x),
            "hutch": lambda: hutch(x),
            "vmap": lambda: vmapped(x),
            "scipy": lambda: scipy_fn(x),
        },
        cfg.repeats,
    )
    true_nll = -float(jnp.mean(dist.log_prob(x)))
    nll = lambda logp: -float(jnp.mean(jnp.asarray(logp)))
    scipy_t = res["scipy"][0]
    rows = []
    for name, label in (
        ("exact", "diffjax `log_prob`, exact divergence, batch as one state"),
        ("hutch", "diffjax `log_prob`, Hutchinson (1 Rademacher probe)"),
        ("vmap", "diffjax, `jax.vmap` of per-example exact solves"),
    ):
        t, (logp, info) = res[name]
        compile_rows.append((f"likelihood.log_prob 2-D ({name})", t.compile))
        nfe = int(jnp.max(info["nfe"]))
        rows.append(
            [label, ms(t.median), f"{t.compile:.2f} s", nfe, ms(t.median / nfe),
             f"{nll(logp):.5f}", f"{scipy_t.median / t.median:.1f}x"]
        )  # fmt: skip
    logp_s, nfev = res["scipy"][1]
    rows.append(
        ["scipy `solve_ivp` RK45 host loop, jitted drift + exact divergence", ms(scipy_t.median),
         f"{scipy_t.compile:.2f} s", nfev, ms(scipy_t.median / nfev), f"{nll(logp_s):.5f}",
         "1.0x"]
    )  # fmt: skip
    diff = abs(nll(res["exact"][1][0]) - nll(logp_s))
    return [
        f"### 4a. NLL of {cfg.nll_points} 2-D points (8 Gaussians, exact score, VP SDE)",
        "",
        f"rtol = atol = {RTOL}, `t_eps` = {T_EPS}, Tsit5 (diffjax) / RK45 (scipy); medians of "
        f"{cfg.repeats} interleaved runs. The diffjax rows are `jax.jit(log_prob)`: see "
        "group 1 for the un-jitted call. NLL in nats per point (exact NLL of the data under "
        f"p_0: {true_nll:.5f}). scipy's error norm is the RMS over the whole flattened batch, "
        "diffjax's the worst example's, so diffjax's solve is the stricter one and takes "
        "more steps at the same rtol/atol; 'run / NFE' compares the cost per evaluation.",
        "",
        table(
            ["method", "run", "compile", "NFE", "run / NFE", "mean NLL", "speed-up over scipy"],
            rows,
        ),
        "",
        f"|NLL(diffjax exact) - NLL(scipy)| = {diff:.2e} nats "
        f"({'within' if diff <= 1e-3 else '**outside**'} 1e-3).",
    ]


ERROR_TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)  # rtol = atol swept for every method
ERROR_TARGETS = (1e-2, 1e-3, 1e-4)  # mean |NLL error| (nats) at which the methods are compared


def equal_error(cfg: Config) -> list[str]:
    """Cost at equal accuracy: each method swept over rtol = atol, its mean absolute error
    against the exact `log p_{t_eps}` of the 8-Gaussian mixture (the exact prior `p_T` too,
    so only the solve errs), then the cheapest setting of each reaching a target error."""
    sde = dj.VPSDE()
    dist = GaussianMixture(*eight_gaussians_params())
    score = exact_model(dist, sde)
    n = min(cfg.nll_points, 1024)
    x = dist.sample(jax.random.key(10), n)
    exact_logp = np.asarray(dist.log_prob(x, sde, T_EPS))
    prior = lambda z: dist.log_prob(z, sde, sde.T)
    tols = ERROR_TOLS[:2] if cfg.quick else ERROR_TOLS
    repeats = max(1, min(cfg.repeats, 3))
    print(f"  likelihood: equal-error sweep, {n} points, tolerances {tols}", flush=True)
    results = {}  # (method, tol) -> (error, nfe per example, seconds per example)
    for tol in tols:
        fns = {
            "batch": _nll_fn(score, Exact(), tol=tol, prior_log_prob_fn=prior),
            "vmap": _per_example_fn(score, tol=tol, prior_log_prob_fn=prior),
            "scipy": scipy_log_prob(score, tol, prior),
        }
        res = compare({m: functools.partial(fn, x) for m, fn in fns.items()}, repeats)
        for method, (t, (logp, info)) in res.items():
            nfe = np.mean(np.asarray(info["nfe"] if isinstance(info, dict) else info))
            err = float(np.mean(np.abs(np.asarray(logp) - exact_logp)))
            results[method, tol] = (err, float(nfe), t.median / n)
    labels = {
        "batch": "diffjax, batch as one state (per-example max norm)",
        "vmap": "diffjax, `jax.vmap` of per-example solves",
        "scipy": "scipy RK45 host loop (RMS norm over the batch)",
    }
    sweep = [
        [labels[m], f"{tol:g}", f"{err:.1e}", f"{nfe:.0f}", f"{sec * 1e6:.1f} us"]
        for (m, tol), (err, nfe, sec) in results.items()
    ]
    at_target, cheapest = [], []
    for target in ERROR_TARGETS:
        best = {}
        for m in labels:
            ok = [(sec, tol, nfe) for (mm, tol), (err, nfe, sec) in results.items()
                  if mm == m and err <= target]  # fmt: skip
            best[m] = min(ok) if ok else None
        scipy_best = best["scipy"]
        reached = {m: b for m, b in best.items() if b is not None}
        if reached:
            cheapest.append(f"{target:g}: {min(reached, key=lambda m: reached[m][0])}")
        for m, b in best.items():
            if b is None:
                at_target.append([f"{target:g}", labels[m], "not reached", "", "", ""])
                continue
            sec, tol, nfe = b
            speed = f"{scipy_best[0] / sec:.1f}x" if scipy_best else "scipy never reaches it"
            at_target.append(
                [f"{target:g}", labels[m], f"{tol:g}", f"{nfe:.0f}", f"{sec * 1e6:.1f} us", speed]
            )
    return [
        "### 4a'. Likelihood at equal accuracy",
        "",
        f"{n} points of the 8 Gaussians, exact score on the VP SDE, exact divergence, exact "
        f"prior `p_T`; error = mean |log p - exact log p_(t_eps)| over the points (nats), "
        f"Tsit5 (diffjax) / RK45 (scipy) at rtol = atol = tol, `t_eps` = {T_EPS}; times per "
        f"example, medians of {repeats} interleaved runs, compile excluded. NFE per example: "
        "the batch solve's steps are shared by all examples; the vmapped solve's mean.",
        "",
        table(["method", "tol", "mean error", "NFE", "time / example"], sweep),
        "",
        "The cheapest setting of each method that reaches each mean error:",
        "",
        table(
            ["target error", "method", "tol", "NFE", "time / example", "speed-up over scipy"],
            at_target,
        ),
        "",
        f"Cheapest layout at each target error ({jax.default_backend()}): "
        f"{', '.join(cheapest)}. `log_prob` solves the batch as one state on every backend "
        "(a per-example solve is a `jax.vmap` of single-example calls, as in the vmap rows).",
    ]


def images(cfg: Config, compile_rows: list) -> list[str]:
    sde = dj.VPSDE()
    key = jax.random.key(2)
    mix = random_mixture(key, (8, 8, 1))
    xi = mix.sample(jax.random.key(3), cfg.mixture_batch)
    fn = _nll_fn(exact_model(mix, sde), Hutchinson(), jax.random.key(4))
    print("  likelihood: [B, 8, 8, 1] mixture", flush=True)
    t, (logp, info) = measure(lambda: fn(xi), cfg.repeats)
    compile_rows.append(("likelihood.log_prob [B,8,8,1] mixture (hutchinson)", t.compile))
    return [
        f"[{cfg.mixture_batch}, 8, 8, 1] 10-component mixture (exact score), Hutchinson: run "
        f"{ms(t.median)}, compile {t.compile:.2f} s, NFE {int(info['nfe'])} (the CPU "
        "counterpart of the H100 table in section 6).",
    ]


def digits_bpd(cfg: Config, compile_rows: list) -> list[str]:
    sde = dj.VPSDE()
    x_all, _ = digits()
    model = nets.UNet(1, time_scale=1000.0, rngs=nnx.Rngs(0))
    apply, params = nets.split(model)
    optimizer = optax.adam(2e-3)
    step = training.make_train_step(
        lambda p, batch, k: losses.dsm(p, apply, k, batch, sde), optimizer
    )
    state = training.create_train_state(params, optimizer)
    print(f"  likelihood: training the U-Net for {cfg.unet_train_steps} steps", flush=True)
    key = jax.random.key(5)
    n_train, batch_train = x_all.shape[0], 128
    start = time.perf_counter()
    loss = float("nan")
    for _ in range(cfg.unet_train_steps):
        key, k_batch, k_step = jax.random.split(key, 3)
        idx = jax.random.choice(k_batch, n_train, (batch_train,), replace=False)
        state, metrics = step(state, x_all[idx], k_step)
        loss = float(metrics["loss"])
    train_s = time.perf_counter() - start

    levels = jnp.round((x_all[: cfg.digits_batch] + 1.0) * 8.0)  # integers 0..16
    x = dequantize(jax.random.key(6), levels, data_range=17)
    model = dj.Model(apply, sde, "eps", params=state.params)
    tol = cfg.digits_tol
    controller = _controller(tol)
    fn = lambda x: log_prob(model, x, key=jax.random.key(7), stepsize_controller=controller)
    print("  likelihood: digits bits/dim", flush=True)
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(x).compile()  # ahead of time: runs are too noisy to subtract
    compile_s = time.perf_counter() - start
    t, (logp, info) = measure(lambda: compiled(x), cfg.repeats)
    compile_rows.append(
        ("likelihood.log_prob digits U-Net (hutchinson; lower().compile())", compile_s)
    )
    bpd = float(jnp.mean(bits_per_dim(logp, (8, 8, 1), data_range=17)))
    trained = (
        f"**briefly trained**: {cfg.unet_train_steps} Adam steps (lr 2e-3, batch {batch_train}) "
        f"of `losses.dsm` on the VP SDE, {train_s:.0f} s, final loss {loss:.3f}"
        if cfg.unet_train_steps
        else "**untrained** (random initialisation, `nnx.Rngs(0)`)"
    )
    return [
        "### 4b. Bits/dim on 8x8 digits",
        "",
        "`nets.UNet(1, time_scale=1000)` (defaults: 32 channels, mults (1, 2), attention at "
        f"the lowest level), {trained}, used as an eps model. Data: the first "
        f"{cfg.digits_batch} digits as integers 0..16, uniformly dequantized "
        "(`data_range=17`) to [-1, 1]; Hutchinson divergence, one Rademacher probe, "
        f"rtol = atol = {tol}; medians of {cfg.repeats} runs. Peak memory: XLA's "
        "`compile().memory_analysis()` of the jitted `log_prob` on this batch.",
        "",
        table(
            ["batch", "bits/dim", "time per batch", "compile", "NFE", "peak memory (XLA)"],
            [
                [
                    cfg.digits_batch,
                    f"{bpd:.3f}",
                    ms(t.median),
                    f"{compile_s:.2f} s",
                    int(info["nfe"]),
                    _memory(compiled),
                ]
            ],
        ),  # fmt: skip
        "",
        "Uniform dequantization of 17 levels bounds the discrete NLL from above; an untrained "
        "or briefly trained model is far from converged, so the bits/dim is a smoke value and "
        "the time per batch (which grows with the stiffness of the learnt field) is the "
        "figure to read.",
    ]


def run(cfg: Config, compile_rows: list) -> str:
    lines = ["## 4. Likelihood (probability-flow ODE)", ""]
    lines += two_d(cfg, compile_rows)
    lines += ["", *equal_error(cfg)]
    lines += ["", *images(cfg, compile_rows), ""]
    lines += digits_bpd(cfg, compile_rows)
    return "\n".join(lines)
