"""Where a public sampler call's time goes: a diagnostic for the GPU (RESULTS section 6).

    PYTHONPATH=. JAX_PLATFORMS=cuda python3 -m benchmarks.public_call

For a few samplers on the benchmark MLP (batch 4096), medians of 40 calls of: the public call;
its compiled program called alone with the arguments the public call passes it (the grid and
the knobs as arguments); the whole call inside `jax.jit` (grid and knobs as constants); and
how soon each call returns (a program that is waited for returns after it has run). Public
minus program alone is the host work; program alone minus the outer jit is the cost of taking
the grid as arguments. Prints a Markdown table; not part of `make bench`. About a minute on a
GPU; on the 2-core CPU, where the network dominates, about ten.
"""

from __future__ import annotations

import time

import jax

import diffjax as dj
from benchmarks.overhead import mlp
from benchmarks.timing import measure, sync, table
from diffjax import samplers
from diffjax.samplers import discrete, karras, multistep, sde

SHAPE = (4096, 2)
REPEATS = 40
CASES = {  # name -> (process, module, its compiled program's name, the public call)
    "ddim (20 steps), VP": (dj.VPSDE(), discrete, "_ddim", lambda k, m: samplers.ddim(k, m, SHAPE, num_steps=20)),
    "heun (10 levels), VP": (dj.VPSDE(), karras, "_karras", lambda k, m: samplers.heun(k, m, SHAPE, num_steps=10)),
    "dpm_solver (2M, 19 steps), sub-VP": (dj.SubVPSDE(), multistep, "_dpm_solver", lambda k, m: samplers.dpm_solver(k, m, SHAPE, num_steps=19)),
    "predictor_corrector (9 steps), VP": (dj.VPSDE(), sde, "_predictor_corrector", lambda k, m: samplers.predictor_corrector(k, m, SHAPE, num_steps=9)),
    "unipc (19 steps), VE": (dj.VESDE(), multistep, "_unipc", lambda k, m: samplers.unipc(k, m, SHAPE, num_steps=19)),
}  # fmt: skip


def _returns_ms(fn, n: int = REPEATS) -> float:
    """Median time until `fn()` returns (its result is waited for outside the timing)."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        sync(out)
    return 1e3 * sorted(times)[n // 2]


def _median_ms(fn) -> float:
    return 1e3 * measure(fn, REPEATS)[0].median


def main() -> None:
    apply, params = mlp()
    key = jax.random.key(0)
    rows = []
    for name, (process, module, program, call) in CASES.items():
        model = dj.Model(apply, process, "eps", params=params)
        compiled, seen = getattr(module, program), {}

        def record(*args, compiled=compiled, seen=seen, **kwargs):
            seen["args"], seen["kwargs"] = args, kwargs
            return compiled(*args, **kwargs)

        setattr(module, program, record)  # capture the arguments of one public call
        try:
            call(key, model)
        finally:
            setattr(module, program, compiled)
        jitted = jax.jit(
            lambda k, p, call=call, process=process: call(k, dj.Model(apply, process, "eps", params=p))[0]
        )
        public = _median_ms(lambda call=call, model=model: call(key, model)[0])
        alone = _median_ms(lambda c=compiled, s=seen: c(*s["args"], **s["kwargs"])[0])
        outer = _median_ms(lambda jitted=jitted: jitted(key, params))
        public_returns = _returns_ms(lambda call=call, model=model: call(key, model)[0])
        outer_returns = _returns_ms(lambda jitted=jitted: jitted(key, params))
        rows.append([
            name, f"{public:.2f} ms", f"{public_returns:.2f} ms", f"{alone:.2f} ms",
            f"{outer:.2f} ms", f"{outer_returns:.2f} ms", f"{public - alone:.2f} ms",
        ])  # fmt: skip
        print(" | ".join(rows[-1]), flush=True)
    header = [
        "sampler", "public call", "returns after", "its program alone", "inside jit",
        "returns after", "host work",
    ]  # fmt: skip
    print(f"\n{jax.devices()}\n\n" + table(header, rows))


if __name__ == "__main__":
    main()
