"""The README's Quickstart runs as written (fewer training steps), prints its figures and
writes its picture."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs(tmp_path):
    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme[readme.index("## Quickstart") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    for long, short in (("range(3000)", "range(100)"), ("50_000", "5_000"), ("(4096, 2)", "(512, 2)"),
                        ("x0[:1024]", "x0[:128]"), ("x0[:4096]", "x0[:512]")):  # fmt: skip
        assert long in code
        code = code.replace(long, short)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    figures = re.search(r"energy distance (\S+) NLL (\S+)", out.stdout)
    assert figures, out.stdout
    energy, nll = (float(v) for v in figures.groups())
    assert math.isfinite(energy) and math.isfinite(nll)  # 100 steps train nothing yet
    assert (tmp_path / "quickstart.png").stat().st_size > 0
