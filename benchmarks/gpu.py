"""Section 6 until a `make bench-gpu` run replaces it: the GPU figures measured so far."""

from __future__ import annotations

from benchmarks.timing import table

SECTION = "\n".join(
    [
        "## 6. GPU",
        "",
        "**To be filled** by `make bench-gpu` on a machine with an NVIDIA GPU (it installs jax "
        "with CUDA 12 and runs `python -m benchmarks.run --gpu`: the overhead, train-step and "
        "likelihood tables, written here with the device named). Until then, the only GPU figures are these, **measured earlier on an "
        "H100, jax 0.11.2, by benchmarks/likelihood_timing.py** (since folded into "
        "`benchmarks/likelihood.py`, group 4), PF-ODE NLL with the exact mixture score, Tsit5, "
        "rtol = atol = 1e-5:",
        "",
        table(
            ["case", "H100 run", "H100 compile", "NFE", "16-core CPU run (same script)"],
            [
                ["4096 2-D points, exact divergence", "11 ms", "1.80 s", 241, "0.82 s"],
                ["4096 2-D points, Hutchinson", "9 ms", "1.56 s", 241, "0.76 s"],
                ["[256, 8, 8, 1] mixture, Hutchinson", "5 ms", "1.76 s", 127, "0.49 s"],
            ],
        ),
    ]
)
