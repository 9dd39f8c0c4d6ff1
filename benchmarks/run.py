"""Entry point of `make bench`: run the benchmark groups and write `benchmarks/RESULTS.md`.

    python -m benchmarks.run [--quick] [--only overhead,peers,quality,likelihood] [--out PATH]
                             [--match REGEX] [--repeats N] [--skip-cpu-peers]
    JAX_PLATFORMS=cuda python -m benchmarks.run --gpu     # `make bench-gpu`
    PYTHONPATH=. JAX_PLATFORMS=cuda python3 -m benchmarks.run --gpu   # jax[cuda] already there

`--gpu` runs the GPU table (`GPU_GROUPS`: the overhead of every sampler and of the train step
over the network floor, and the likelihood tables against the scipy host loop) on the
accelerator and writes it as section 6 of `--out`, the device named, leaving the other sections
as they are (a CPU run keeps an existing section 6 the same way). `--skip-cpu-peers` leaves out
the groups whose peer or budget is CPU-only (`CPU_ONLY`: diffusers on PyTorch CPU, the flowjax
flow's 90 CPU seconds).

`--only digits_recipes` (opt-in, about an hour on two CPU cores; `--digits-steps N` trains each
recipe N steps) re-runs the digits recipe table at the end of section 4b
(`benchmarks/digits_recipes.py`), otherwise carried over from the existing `--out`.
`--quick` uses tiny sizes to check the code paths (its numbers mean nothing); `--match` keeps
the overhead rows whose name matches (to re-measure a few); section 5b (training recipes,
`python -m benchmarks.recipes`, pasted by hand) is carried over from the existing `--out`. The peer
comparisons need the `bench` extra (torch 2.13.0 CPU, diffusers, diffusionjax, FlaxDiff,
flowjax); without it they are skipped with a note. Groups run in one process, one after another;
every ratio is measured back to back within a group.
"""

from __future__ import annotations

import os

# torch's OpenMP threads spin while waiting by default; on a shared, loaded machine that made 2
# threads 4x slower than 1. Set before torch (imported by the peer groups) loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import dataclasses
import datetime
import importlib
import importlib.metadata
import platform
import time

from benchmarks import config, gpu
from benchmarks.timing import table

# modules of `benchmarks`, run in order
GROUPS = ("imports", "overhead", "peers", "jax_peers", "quality", "likelihood", "flow_peer")
GPU_GROUPS = ("overhead", "likelihood")  # the GPU table, section 6 (`--gpu`)
CPU_ONLY = ("peers", "flow_peer")  # left out by `--skip-cpu-peers` (and by `--gpu`)
GPU_HEADING = "## 6. GPU"
OPT_IN = ("digits_recipes",)  # groups run only when `--only` names them (it takes an hour)
DIGITS_RECIPES_HEADING = "#### Digits recipes"  # its block, at the end of section 4b
KEPT = ("## 5b.",)  # sections written by hand from other scripts (benchmarks/recipes.py): kept


def kept_sections(path: str) -> list[str]:
    """The sections of the existing `path` whose heading starts with one of `KEPT`."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return []
    parts = ("\n" + text).split("\n## ")
    return ["## " + p.strip() for p in parts[1:] if ("## " + p).startswith(KEPT)]


def kept_block(path: str, heading: str) -> str:
    """The block of the existing `path` from the line `heading...` to the next `## ` or
    `### ` heading ("" when absent)."""
    try:
        with open(path) as f:
            text = "\n" + f.read()
    except OSError:
        return ""
    start = text.find("\n" + heading)
    if start < 0:
        return ""
    ends = [text.find(mark, start + 1) for mark in ("\n## ", "\n### ")]
    end = min([e for e in ends if e >= 0], default=len(text))
    return text[start + 1 : end].strip()


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def accelerator() -> str:
    """The device kind of JAX's default backend (e.g. `NVIDIA H200`), or `none` on CPU."""
    import jax

    if jax.default_backend() == "cpu":
        return "none"
    devices = jax.devices()
    return f"{len(devices)} x {devices[0].device_kind} ({jax.default_backend()})"


def gpu_section(machine_text: str, sections: list[str], compile_table: str) -> str:
    """Section 6 of RESULTS.md from a `--gpu` run: every heading one level down."""
    body = "\n\n".join([machine_text, *sections, "## 5a. Compile time\n\n" + compile_table])
    lines = ["#" + line if line.startswith("#") else line for line in body.splitlines()]
    return "\n".join([GPU_HEADING, "", "Written by `make bench-gpu`.", "", *lines])


def replace_gpu_section(path: str, section: str) -> str:
    """The text of `path` with its section 6 (from `GPU_HEADING` to the end) replaced."""
    with open(path) as f:
        text = f.read()
    start = text.find("\n" + GPU_HEADING)
    head = text if start < 0 else text[: start + 1]
    return head.rstrip() + "\n\n" + section + "\n"


def kept_gpu_section(path: str) -> str:
    """The existing section 6 of `path` (a GPU run, kept by CPU runs), or the placeholder."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return gpu.SECTION
    start = text.find("\n" + GPU_HEADING)
    return gpu.SECTION if start < 0 else text[start + 1 :].strip()


def machine(load_before, load_after, elapsed: float, cfg) -> str:
    import jax

    packages = ["jax", "jaxlib", "flax", "diffrax", "equinox", "optax", "numpy", "scipy"]
    packages += ["torch", "diffusers", "diffusionjax", "flaxdiff", "flowjax"]
    rows = [
        ["date", datetime.datetime.now().isoformat(timespec="minutes")],
        ["CPU", f"{_cpu_model()}, {os.cpu_count()} logical cores"],
        ["JAX backend / devices", f"{jax.default_backend()} / {jax.devices()}"],
        ["accelerator", accelerator()],
        ["Python", platform.python_version()],
        ["versions", ", ".join(f"{p} {_version(p)}" for p in packages)],
        ["load average (1, 5, 15 min) before", ", ".join(f"{v:.2f}" for v in load_before)],
        ["load average (1, 5, 15 min) after", ", ".join(f"{v:.2f}" for v in load_after)],
        ["settings", f"repeats {cfg.repeats}, batch {cfg.batch}, quick={cfg.quick}"],
        ["total wall time", f"{elapsed / 60:.1f} min"],
    ]
    loaded = max(load_before[1], load_after[1]) > 0.5 * (os.cpu_count() or 1)
    note = (
        "**The machine was shared and loaded while this ran** (5-minute load average above half "
        "the cores, before or after): absolute times are inflated and noisier than on an idle "
        "machine; the ratios are measured back to back in one process and are the numbers to "
        "read."
        if loaded
        else "The machine was idle (5-minute load average below half the cores)."
    )
    return "\n".join(["## Machine", "", table(["", ""], rows), "", note])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, checks code paths")
    parser.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups")
    parser.add_argument("--out", default=os.path.join("benchmarks", "RESULTS.md"))
    parser.add_argument("--match", default="", help="only the rows whose name has this regex")
    parser.add_argument("--repeats", type=int, default=None, help="steady-state runs per timing")
    parser.add_argument(
        "--digits-steps", type=int, default=0, help="digits_recipes: training steps (0: own)"
    )
    parser.add_argument(
        "--gpu", action="store_true", help="the GPU table, written as section 6 of --out"
    )
    parser.add_argument(
        "--skip-cpu-peers", action="store_true", help=f"leave out {', '.join(CPU_ONLY)}"
    )
    args = parser.parse_args()
    cfg = config.quick() if args.quick else config.full()
    cfg = dataclasses.replace(cfg, match=args.match)
    if args.repeats is not None:
        cfg = dataclasses.replace(cfg, repeats=args.repeats)
    if args.digits_steps:
        cfg = dataclasses.replace(cfg, digits_steps=args.digits_steps)
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    if args.gpu:
        import jax

        if jax.default_backend() == "cpu" and not args.quick:
            parser.error(
                "--gpu found no accelerator (JAX backend cpu); install jax with CUDA "
                "(`make bench-gpu`) and set JAX_PLATFORMS=cuda, or add --quick to check the "
                "code path on the CPU."
            )
        if args.only == parser.get_default("only"):
            groups = list(GPU_GROUPS)
    if args.gpu or args.skip_cpu_peers:
        groups = [g for g in groups if g not in CPU_ONLY]
    unknown = set(groups) - set(GROUPS + OPT_IN)
    if unknown:
        parser.error(f"unknown groups {sorted(unknown)}; choose from {list(GROUPS + OPT_IN)}")

    load_before = os.getloadavg()
    start = time.perf_counter()
    sections, compile_rows = [], []
    for name in groups:
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        module = importlib.import_module(f"benchmarks.{name}")
        sections.append(module.run(cfg, compile_rows))
        if name == "likelihood" and not args.gpu and "digits_recipes" not in groups:  # kept
            sections[-1] += "\n\n" + kept_block(args.out, DIGITS_RECIPES_HEADING)
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", flush=True)
    elapsed = time.perf_counter() - start
    load_after = os.getloadavg()

    compile_table = table(
        ["entry point", "compile (first call - steady median)"],
        [[name, f"{sec:.2f} s"] for name, sec in compile_rows],
    )
    if args.gpu:
        section = gpu_section(machine(load_before, load_after, elapsed, cfg), sections, compile_table)
        text = replace_gpu_section(args.out, section) if os.path.exists(args.out) else section
        with open(args.out, "w") as f:
            f.write(text)
        print(f"wrote section 6 of {args.out} ({elapsed / 60:.1f} min)")
        return
    text = "\n\n".join(
        [
            "# diffjax benchmarks",
            "Written by `make bench` (`python -m benchmarks.run`); not part of `make test`. "
            "Every time is a median of steady-state runs after a warm-up call; every ratio "
            "compares runs interleaved in the same process.",
            machine(load_before, load_after, elapsed, cfg),
            *sections,
            "## 5a. Compile time of each jitted entry point\n\n"
            "First call (trace + compile + run) minus the steady-state median, same process "
            "and load as the tables above.\n\n" + compile_table,
            *kept_sections(args.out),
            kept_gpu_section(args.out),
        ]
    )
    with open(args.out, "w") as f:
        f.write(text + "\n")
    print(f"wrote {args.out} ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main()
