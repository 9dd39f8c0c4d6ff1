"""`import diffjax` loads neither Flax, Orbax nor Grain; `nets` and `training` load on first use."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import diffjax as dj
assert not any(m == "flax" or m.startswith(("flax.", "orbax", "grain")) for m in sys.modules), "eager"
assert "optax" not in sys.modules
dj.nets.MLP, dj.training.make_train_step
assert "flax" in sys.modules and any(m.startswith("orbax") for m in sys.modules)
print("ok")
"""


def test_lazy_import():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
