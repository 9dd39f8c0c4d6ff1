"""Shared timing helpers: warm-up, medians of repeated runs, back-to-back comparisons.

Every measured callable takes no argument and returns its result; the result is synchronised
(`block_until_ready` on every JAX leaf; torch on CPU is synchronous) before the clock stops.
`compare` runs its callables interleaved (A, B, A, B, ...) after one warm-up call each, so the
ratios it gives are measured back to back under the same machine load.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import jax


def sync(out):
    """Wait for every JAX array in the pytree `out`; other leaves pass through."""
    for leaf in jax.tree.leaves(out):
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
    return out


@dataclasses.dataclass(frozen=True)
class Timing:
    """`first`: the first call (trace + compile + run); `runs`: the steady-state calls (s)."""

    first: float
    runs: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def compile(self) -> float:
        """First call minus the steady-state median: tracing and compilation."""
        return max(self.first - self.median, 0.0)

    @property
    def spread(self) -> float:
        """(max - min) / median of the steady-state runs."""
        return (max(self.runs) - min(self.runs)) / self.median


def _call(fn: Callable) -> tuple[float, object]:
    start = time.perf_counter()
    out = sync(fn())
    return time.perf_counter() - start, out


def measure(fn: Callable, repeats: int) -> tuple[Timing, object]:
    """Time `fn()` once cold, then `repeats` times warm; returns `(Timing, last result)`."""
    return next(iter(compare({"fn": fn}, repeats).values()))


def compare(fns: dict[str, Callable], repeats: int) -> dict[str, tuple[Timing, object]]:
    """Warm each callable once, then time them interleaved `repeats` times each."""
    first, outs = {}, {}
    for name, fn in fns.items():
        first[name], outs[name] = _call(fn)
    runs = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            elapsed, outs[name] = _call(fn)
            runs[name].append(elapsed)
    return {name: (Timing(first[name], tuple(runs[name])), outs[name]) for name in fns}


def table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; floats are printed as given (format them first)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"
