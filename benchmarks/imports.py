"""Import time: `import diffjax` against `import jax`, and what first use of the lazy modules adds.

Each row is a fresh interpreter (`python -c`), timed from outside (process start to exit, so the
interpreter's own start-up is in every row; the `python -c pass` row shows it); rows are run
interleaved, one round after another, and the table gives medians. `samplers` and `likelihood`
load diffrax, `nets` Flax, `training` Flax, Optax and Orbax: `import diffjax` loads none of them
(`tests/test_package.py`).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from benchmarks.config import Config
from benchmarks.timing import table

ROWS = {
    "python -c pass": "pass",
    "import jax": "import jax",
    "import diffjax": "import diffjax",
    "import diffjax; diffjax.samplers, diffjax.likelihood": (
        "import diffjax; diffjax.samplers.dpm_solver, diffjax.likelihood.log_prob"
    ),
    "import diffjax; diffjax.nets (Flax)": "import diffjax; diffjax.nets.MLP",
    "import diffjax; diffjax.training (Flax, Optax, Orbax)": (
        "import diffjax; diffjax.training.make_train_step"
    ),
    "import flax.nnx": "import flax.nnx",
    "import orbax.checkpoint": "import orbax.checkpoint",
}
TARGET = 1.5  # issue: `import diffjax` within 1.5x `import jax`


def _time(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def run(cfg: Config, compile_rows: list) -> str:
    rounds = 2 if cfg.quick else max(cfg.repeats, 7)
    print(f"  imports: {rounds} rounds of {len(ROWS)} fresh interpreters", flush=True)
    times = {name: [] for name in ROWS}
    for _ in range(rounds):
        for name, code in ROWS.items():
            times[name].append(_time(code))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    base, jax_s = median["python -c pass"], median["import jax"]
    rows = [
        [
            f"`{name}`",
            f"{median[name] * 1e3:.0f} ms",
            f"{(median[name] - base) * 1e3:.0f} ms",
            f"{(median[name] - base) / (jax_s - base):.2f}x",
        ]
        for name in ROWS
    ]
    ratio = (median["import diffjax"] - base) / (jax_s - base)
    verdict = "within" if ratio <= TARGET else "**over**"
    return "\n".join(
        [
            "## 0. Import time",
            "",
            f"Fresh interpreters, medians of {rounds} interleaved rounds; 'import' is the wall "
            "time minus the bare interpreter's (`python -c pass`). `import diffjax` loads jax, "
            "equinox and the package; `samplers` and `likelihood` load diffrax (with lineax and "
            "optimistix), `nets` Flax and `training` Flax, Optax and Orbax on first use.",
            "",
            table(["command", "wall", "import", "import / `import jax`"], rows),
            "",
            f"`import diffjax` is {ratio:.2f}x `import jax` ({verdict} the {TARGET}x target).",
        ]
    )
