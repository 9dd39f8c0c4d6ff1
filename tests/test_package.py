"""`import diffjax` loads none of diffrax, Flax, Optax, Orbax or Grain; the modules that need
them (`samplers`, `likelihood`, `fokker_planck`, `nets`, `training`, `pretrained`) load on
first use."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys
import diffjax as dj
heavy = ("diffrax", "lineax", "optimistix", "optax", "flax", "orbax", "grain")
loaded = lambda: {m.split(".")[0] for m in sys.modules} & set(heavy)
assert not loaded(), f"eager: {sorted(loaded())}"
from diffjax import samplers
samplers.dpm_solver, dj.likelihood.log_prob
assert loaded() == {"diffrax", "lineax", "optimistix"}, sorted(loaded())
dj.nets.MLP, dj.training.make_train_step, dj.load
assert {"flax", "optax", "orbax"} <= loaded(), sorted(loaded())
print("ok")
"""


def test_lazy_import():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]
