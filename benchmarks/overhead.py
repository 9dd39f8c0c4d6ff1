"""Overhead of each sampler and of `likelihood.log_prob` over the network floor.

The network is a fixed `nets.MLP(2, hidden=(256, 256, 256))` on a `[batch, 2]` state. The floor
is the same network evaluated `info.nfe` times in one jitted `lax.scan`, the state carried
through it (`x <- x + 1e-3 net(x, t)`) so nothing can be hoisted; for `log_prob` the floor
evaluates the same vector field as the solver does (network, `jax.linearize` and the exact
divergence from `D` JVPs). Each sampler is timed as a user calls it (`samplers.ddim(key, model,
...)` with the network wrapped once in a `dj.Model`, argument checks included) and wrapped in one
`jax.jit` (checks at trace time only), back to back with its floor.

`train_steps` (section 1b): `training.make_train_step` (EMA, non-finite guard, donation) against
a hand-written jitted Optax step of the same loss (`value_and_grad`, `optimizer.update`,
`optax.apply_updates`), for the MLP and the digits U-Net.
"""

from __future__ import annotations

import dataclasses
import re
import time
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import diffjax as dj
from benchmarks.config import Config
from benchmarks.timing import compare, ms, table
from diffjax import likelihood, losses, nets, samplers, schedules, training
from diffjax.data import eight_gaussians

TARGET = 1.10


def mlp(seed: int = 0):
    """`(apply, params)` of the benchmark network, `MLP(2, hidden=(256, 256, 256))`.

    `time_scale=1`: untrained, the default 1000 makes the random field vary so fast in `t` that
    the adaptive `log_prob` solve takes ~1800 evaluations instead of ~85 (the floor takes as
    many, so the ratio would not change, only the run time).
    """
    return nets.split(nets.MLP(2, hidden=(256, 256, 256), time_scale=1.0, rngs=nnx.Rngs(seed)))


def _exact_divergence(f, x):
    """`(f(x), tr(df/dx))` per example, from `D` JVPs of the linearised `f`."""
    fx, jvp = jax.linearize(f, x)
    eye = jnp.eye(x.shape[1], dtype=x.dtype)
    div = sum(jvp(jnp.broadcast_to(e, x.shape))[:, i] for i, e in enumerate(eye))
    return fx, div


def floors(apply):
    """Jitted floors `(params, x, nfe) -> x` for plain evaluations and for the NLL vector field."""

    @partial(jax.jit, static_argnames="nfe")
    def network(params, x, nfe):
        def body(x, t):
            return x + 1e-3 * apply(params, x, jnp.full(x.shape[:1], t)), None

        return jax.lax.scan(body, x, jnp.linspace(1.0, 1e-3, nfe))[0]

    @partial(jax.jit, static_argnames="nfe")
    def vector_field(params, x, nfe):
        def body(carry, t):
            x, delta = carry
            dx, div = _exact_divergence(lambda y: apply(params, y, jnp.full(y.shape[:1], t)), x)
            return (x + 1e-3 * dx, delta + 1e-3 * div), None

        carry = (x, jnp.zeros(x.shape[:1], x.dtype))
        return jax.lax.scan(body, carry, jnp.linspace(1e-5, 1.0, nfe))[0]

    return network, vector_field


def sampler_cases(cfg: Config) -> dict:
    """name -> `(process, fn(key, model) -> (samples, info))` with about `cfg.nfe` evaluations;
    `model` is an eps `dj.Model` on `process`."""
    shape = (cfg.batch, 2)
    n, half = cfg.nfe, (cfg.nfe - 1) // 2
    sde, schedule = dj.VPSDE(), schedules.linear(1000)
    short = schedules.linear(n)
    return {
        f"ddpm (T={n} schedule)": (short, lambda k, m: samplers.ddpm(k, m, shape)),
        f"ddim ({n} steps)": (schedule, lambda k, m: samplers.ddim(k, m, shape, num_steps=n)),
        f"reverse_sde (Euler, {n - 1} steps)": (
            sde,
            lambda k, m: samplers.reverse_sde(k, m, shape, num_steps=n - 1),
        ),
        f"predictor_corrector ({half} steps, 1 corrector)": (
            sde,
            lambda k, m: samplers.predictor_corrector(k, m, shape, num_steps=half),
        ),
        f"ode (Heun, {half} steps)": (sde, lambda k, m: samplers.ode(k, m, shape, num_steps=half)),
        f"dpm_solver (2M, {n - 1} steps)": (
            sde,
            lambda k, m: samplers.dpm_solver(k, m, shape, num_steps=n - 1, order=2),
        ),
        f"dpm_solver (3M, {n - 1} steps)": (
            sde,
            lambda k, m: samplers.dpm_solver(k, m, shape, num_steps=n - 1, order=3),
        ),
        f"heun ({half + 1} levels)": (
            sde,
            lambda k, m: samplers.heun(k, m, shape, num_steps=half + 1),
        ),
        f"euler ({n} levels)": (sde, lambda k, m: samplers.euler(k, m, shape, num_steps=n)),
        f"unipc (bh2, order 2, {n - 1} steps)": (
            sde,
            lambda k, m: samplers.unipc(k, m, shape, num_steps=n - 1),
        ),
        f"dpm_solver (SDE 2M, {n - 1} steps)": (
            sde,
            lambda k, m: samplers.dpm_solver(k, m, shape, num_steps=n - 1, stochastic=True),
        ),
    }


def process_cases(cfg: Config) -> dict:
    """The fixed-step continuous samplers on every other process, the network read as velocity
    (so every step converts a velocity prediction to the sampler's view)."""
    shape = (cfg.batch, 2)
    n, half = cfg.nfe, (cfg.nfe - 1) // 2
    processes = {
        "sub-VP": dj.SubVPSDE(), "VE": dj.VESDE(), "EDM": dj.EDM(), "RF": dj.RectifiedFlow(),
        "cosine": dj.Cosine(),
    }  # fmt: skip
    runs = {
        f"ddim ({n - 1} steps)": lambda k, m: samplers.ddim(k, m, shape, num_steps=n - 1),
        f"dpm_solver (2M, {n - 1} steps)": lambda k, m: samplers.dpm_solver(k, m, shape, num_steps=n - 1),
        f"reverse_sde (Euler, {n - 1} steps)": lambda k, m: samplers.reverse_sde(k, m, shape, num_steps=n - 1),
        f"predictor_corrector ({half} steps)": lambda k, m: samplers.predictor_corrector(k, m, shape, num_steps=half),
        f"ode (Heun, {half} steps)": lambda k, m: samplers.ode(k, m, shape, num_steps=half),
        f"heun ({half + 1} levels)": lambda k, m: samplers.heun(k, m, shape, num_steps=half + 1),
        f"euler ({n} levels)": lambda k, m: samplers.euler(k, m, shape, num_steps=n),
        f"unipc ({n - 1} steps)": lambda k, m: samplers.unipc(k, m, shape, num_steps=n - 1),
    }  # fmt: skip
    return {
        f"{run_name} on {p_name}": (process, run)
        for p_name, process in processes.items()
        for run_name, run in runs.items()
    }


def _row(name, nfe, timings, first, compile_rows):
    """A table row; `first` is the duration of the first (compiling) public call, or None when
    the public call compiles every time (then the jitted call's first run gives the compile)."""
    fl, public, jitted = (timings[k][0] for k in ("floor", "public", "jit"))
    compile_s = jitted.compile if first is None else max(first - public.median, 0.0)
    compile_rows.append((name, compile_s))
    r_pub, r_jit = public.median / fl.median, jitted.median / fl.median
    flag = "" if r_pub <= TARGET else f" **>{TARGET}**"
    return [
        name, nfe, ms(fl.median), ms(public.median), ms(jitted.median),
        f"{r_pub:.3f}{flag}", f"{r_jit:.3f}", f"{public.spread:.0%}",
    ]  # fmt: skip


def run(cfg: Config, compile_rows: list) -> str:
    apply, params = mlp()
    network_floor, vf_floor = floors(apply)
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.key(1), (cfg.batch, 2))
    rows = []
    cases = {name: (process, case, "eps") for name, (process, case) in sampler_cases(cfg).items()}
    cases |= {name: (p, case, "velocity") for name, (p, case) in process_cases(cfg).items()}
    cases = {name: c for name, c in cases.items() if re.search(cfg.match, name)}
    for name, (process, case, kind) in cases.items():
        print(f"  overhead: {name}", flush=True)
        model = dj.Model(apply, process, kind, params=params)
        start = time.perf_counter()
        nfe = int(case(key, model)[1].nfe)  # the first call: trace, compile, run
        first = time.perf_counter() - start
        jitted = jax.jit(
            lambda k, p, case=case, process=process, kind=kind: case(
                k, dj.Model(apply, process, kind, params=p)
            )[0]
        )
        timings = compare(
            {
                "floor": lambda nfe=nfe: network_floor(params, x, nfe),
                "public": lambda case=case, model=model: case(key, model)[0],
                "jit": lambda jitted=jitted: jitted(key, params),
            },
            cfg.repeats,
        )
        rows.append(_row(name, nfe, timings, first, compile_rows))
        print("    " + " | ".join(str(c) for c in rows[-1]), flush=True)  # kept if cut short

    if re.search(cfg.match, "likelihood.log_prob"):
        rows.append(_log_prob_row(cfg, apply, params, vf_floor, compile_rows))
    section = _section(cfg, rows)
    if re.search(cfg.match, "train step"):
        section += "\n\n" + train_steps(cfg, compile_rows)
    if re.search(cfg.match, "host work"):
        section += "\n\n" + host_work(cfg, apply, params)
    return section


HOST_BATCH = 4  # a state small enough that the program's run time is far below the host work


def host_work(cfg: Config, apply, params) -> str:
    """Section 1c: the host work of a public call, its median minus the jitted call's, on a
    `[4, 2]` state (the run time left is the network's, the same in both)."""
    repeats = 20 * cfg.repeats  # each call is about a millisecond: many runs for a median
    rows, key = [], jax.random.key(0)
    for name, (process, case) in sampler_cases(dataclasses.replace(cfg, batch=HOST_BATCH)).items():
        print(f"  overhead: host work of {name}", flush=True)
        model = dj.Model(apply, process, "eps", params=params)
        jitted = jax.jit(
            lambda k, p, case=case, process=process: case(k, dj.Model(apply, process, "eps", params=p))[0]
        )
        timings = compare(
            {"public": lambda case=case, model=model: case(key, model)[0],
             "jit": lambda jitted=jitted: jitted(key, params)},
            repeats,
        )  # fmt: skip
        public, jit = timings["public"][0].median, timings["jit"][0].median
        rows.append([name, ms(public), ms(jit), ms(public - jit)])
    return "\n".join(
        [
            "### 1c. Host work of a public call",
            "",
            f"The samplers of section 1 on a `[{HOST_BATCH}, 2]` state, medians of {repeats} "
            "interleaved runs: the public call (checks, time grid, dispatch) minus the same call "
            "inside `jax.jit`. On a GPU this work is not hidden by the network.",
            "",
            table(["entry point", "public call", "inside jit", "host work"], rows),
        ]
    )


def _log_prob_row(cfg, apply, params, vf_floor, compile_rows):
    print("  overhead: log_prob", flush=True)
    data = eight_gaussians(jax.random.key(2), cfg.batch)
    sde = dj.VPSDE()
    model = dj.Model(apply, sde, "eps", params=params)
    nll = lambda d, m: likelihood.log_prob(m, d, divergence=likelihood.Exact())
    nfe = int(nll(data, model)[1]["nfe"])
    jitted = jax.jit(lambda d, p: nll(d, dj.Model(apply, sde, "eps", params=p))[0])
    timings = compare(
        {
            "floor": lambda: vf_floor(params, data, nfe),
            "public": lambda: nll(data, model)[0],
            "jit": lambda: jitted(data, params),
        },
        cfg.repeats,
    )
    return _row("likelihood.log_prob (exact div., Tsit5)", nfe, timings, None, compile_rows)


def _hand_written_step(loss_fn, optimizer):
    """The plain Optax step a user would write: `(params, opt_state, batch, key) -> (...)`."""

    @jax.jit
    def step(params, opt_state, batch, key):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def _time_train_steps(loss_fn, params, x0, keys, repeats):
    """Timings of `len(keys)` steps of `make_train_step` (EMA) and of the hand-written step."""
    optimizer = optax.adam(1e-3)
    ours_step = training.make_train_step(loss_fn, optimizer, ema_decay=0.999)
    hand_step = _hand_written_step(loss_fn, optimizer)
    state = training.create_train_state(params, optimizer, ema_decay=0.999)
    hand = (params, optimizer.init(params))

    def ours():
        nonlocal state
        for k in keys:
            state, metrics = ours_step(state, x0, k)
        return metrics["loss"]

    def theirs():
        nonlocal hand
        p, o = hand
        for k in keys:
            p, o, loss = hand_step(p, o, x0, k)
        hand = (p, o)
        return loss

    res = compare({"ours": ours, "hand": theirs}, repeats)
    return res["ours"][0], res["hand"][0]


def train_steps(cfg: Config, compile_rows: list) -> str:
    """`make_train_step` against a hand-written Optax step, `cfg.train_steps` steps per run."""
    sde, n = dj.VPSDE(), cfg.train_steps
    unet = nets.UNet(1, channels=16, attention_levels=(), time_scale=1000.0, rngs=nnx.Rngs(0))
    cases = {
        f"MLP (256x3), batch {cfg.batch}": (mlp(), eight_gaussians(jax.random.key(3), cfg.batch)),
        "U-Net (16 channels, 0.16M), batch 128 of 8x8": (
            nets.split(unet),
            jax.random.uniform(jax.random.key(3), (128, 8, 8, 1), minval=-1.0, maxval=1.0),
        ),
    }
    keys = list(jax.random.split(jax.random.key(4), n))
    rows = []
    for name, ((apply, params), x0) in cases.items():
        print(f"  overhead: train step, {name}", flush=True)
        loss_fn = lambda p, batch, key, apply=apply: losses.dsm(p, apply, key, batch, sde)
        t_ours, t_hand = _time_train_steps(loss_fn, params, x0, keys, cfg.repeats)
        compile_rows.append((f"training.make_train_step, {name}", t_ours.compile))
        rows.append(
            [
                name, ms(t_hand.median / n), ms(t_ours.median / n),
                f"{t_ours.median / t_hand.median:.3f}", f"{t_ours.spread:.0%}",
            ]
        )  # fmt: skip
        print("    " + " | ".join(str(c) for c in rows[-1]), flush=True)
    return "\n".join(
        [
            "### 1b. Training step against a hand-written Optax step",
            "",
            f"`losses.dsm` (eps, VP) with Adam; {n} steps per timed run, medians of "
            f"{cfg.repeats} interleaved runs, per step. Ours: `training.make_train_step` with "
            "EMA 0.999 (warm-up), the non-finite guard, gradient norm in the metrics and the "
            "state donated; hand-written: `jax.jit` of `value_and_grad` + `optimizer.update` + "
            "`optax.apply_updates`, no EMA.",
            "",
            table(["network, batch", "hand-written step", "make_train_step", "ratio", "spread"], rows),
        ]
    )


def _section(cfg: Config, rows: list) -> str:
    header = [
        "entry point", "NFE", "floor", "public call", "inside jit", "public / floor",
        "jit / floor", "spread",
    ]  # fmt: skip
    return "\n".join(
        [
            "## 1. Overhead over the network floor",
            "",
            f"`MLP(2, hidden=(256, 256, 256))`, batch {cfg.batch}, 2-D, medians of "
            f"{cfg.repeats} runs measured back to back (floor, public call, jitted call) in "
            "one process. Floor: the same network evaluated NFE times in one jitted "
            "`lax.scan` with the state carried through it; for `log_prob`, the same vector "
            "field (network + `jax.linearize` + 2 JVPs for the exact divergence) NFE times. "
            "Public call: the sampler called as a user does (argument checks, "
            "`jax.eval_shape` of the model, dispatch); inside jit: the whole call wrapped in "
            f"`jax.jit`. Target: <= {TARGET}x. Spread: (max - min) / median of the public "
            "call's runs.",
            "",
            table(header, rows),
        ]
    )
