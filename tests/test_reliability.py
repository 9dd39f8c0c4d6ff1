"""Values that can only be checked under `jit`, NaNs produced inside a computation, and float64
switched on after `import diffjax`: reported, never silent."""

from __future__ import annotations

import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import diffjax as dj


def test_traced_values_are_checked_at_run_time():
    """`dequantize` of 300 with 17 levels and `log_prob` with `t_eps = 0` fail under `jit`
    with messages naming the argument, as they do eagerly."""
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"[`']x[`']"):
        dj.likelihood.dequantize(key, jnp.full((2, 3), 300.0), data_range=17)
    with pytest.raises(Exception, match="`x` must hold integers"):
        jax.jit(lambda x: dj.likelihood.dequantize(key, x, data_range=17))(jnp.full((2, 3), 300.0))
    model = dj.exact_model(dj.gaussian(jnp.zeros(2), 1.0), dj.VPSDE(), "score")
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="t_eps"):
        dj.likelihood.log_prob(model, x, divergence=dj.likelihood.Exact(), t_eps=0.0)
    run = eqx.filter_jit(lambda e: dj.likelihood.log_prob(model, x, divergence=dj.likelihood.Exact(), t_eps=e)[0])
    with pytest.raises(Exception, match="t_eps"):
        jax.block_until_ready(run(jnp.asarray(0.0)))
    np.testing.assert_allclose(run(jnp.asarray(1e-5)), dj.likelihood.log_prob(model, x, divergence=dj.likelihood.Exact())[0], rtol=1e-5)


def test_nonfinite_results_are_flagged():
    """A model that blows up, and annealed Langevin with far too large a step, say so in `info`."""
    vp = dj.VPSDE()
    good = dj.exact_model(dj.gaussian(jnp.zeros(2), 1.0), vp, "eps")
    bad = dj.Model(lambda x, t: jnp.where(t[:, None] < 0.5, jnp.inf, x), vp, "eps")
    key = jax.random.key(0)
    assert bool(dj.samplers.dpm_solver(key, good, (8, 2), num_steps=5)[1].finite)
    assert not bool(dj.samplers.dpm_solver(key, bad, (8, 2), num_steps=5)[1].finite)
    score = lambda x, sigma: -x / (1.0 + sigma[:, None] ** 2)
    _, info = dj.langevin.annealed(key, score, np.geomspace(3.0, 0.01, 3), (8, 2), steps_per_level=50, step_size=1e3)
    assert not bool(info["finite"])
    _, info = dj.langevin.annealed(key, score, np.geomspace(3.0, 0.01, 3), (8, 2), steps_per_level=50)
    assert bool(info["finite"])


def test_vae_obs_std_must_be_positive():
    with pytest.raises(ValueError, match="obs_std"):
        dj.losses.vae_elbo(None, dj.losses.VAEApply(lambda p, x: (x, x), lambda p, z: z), jax.random.key(0), jnp.ones((2, 2)), obs_std=0.0)


X64_AFTER_IMPORT = """
import jax, jax.numpy as jnp, numpy as np
import diffjax as dj
jax.config.update("jax_enable_x64", True)
angles = 2 * np.pi * np.arange(8) / 8
gmm = dj.GaussianMixture(np.full(8, 1 / 8), 2 * np.stack([np.cos(angles), np.sin(angles)], 1), np.full(8, 0.1))
ref = gmm.sample(jax.random.key(1), 2000)
sch, key, shape = dj.schedules.linear(1000), jax.random.key(0), (2000, 2)
runs = {
    "ddpm": lambda: dj.samplers.ddpm(key, dj.exact_model(gmm, sch, "eps"), shape),
    "ddim": lambda: dj.samplers.ddim(key, dj.exact_model(gmm, sch, "eps"), shape, grid="quadratic"),
    "dpm_solver": lambda: dj.samplers.dpm_solver(key, dj.exact_model(gmm, dj.EDM(), "x0"), shape, num_steps=30),
    "dpm_solver_sde": lambda: dj.samplers.dpm_solver(key, dj.exact_model(gmm, dj.VPSDE(), "eps"), shape, num_steps=50, stochastic=True),
    "unipc": lambda: dj.samplers.unipc(key, dj.exact_model(gmm, dj.Cosine(), "v"), shape, num_steps=20),
    "heun": lambda: dj.samplers.heun(key, dj.exact_model(gmm, dj.EDM(), "x0"), shape, num_steps=40),
    "euler": lambda: dj.samplers.euler(key, dj.exact_model(gmm, dj.RectifiedFlow(), "velocity"), shape, num_steps=200, churn=10.0),
    "reverse_sde": lambda: dj.samplers.reverse_sde(key, dj.exact_model(gmm, dj.VESDE(), "score"), shape, num_steps=500),
    "predictor_corrector": lambda: dj.samplers.predictor_corrector(key, dj.exact_model(gmm, dj.SubVPSDE(), "eps"), shape),
    "probability_flow": lambda: dj.samplers.probability_flow(key, dj.exact_model(gmm, dj.RectifiedFlow(), "velocity"), shape),
    "ula": lambda: dj.langevin.ula(key, lambda x: gmm.score(x), gmm.sample(jax.random.key(3), 2000), step_size=1e-4, num_steps=100),
    "annealed": lambda: dj.langevin.annealed(key, lambda x, s: gmm.score(x, dj.EDM(), s), np.geomspace(2.0, 0.01, 10), shape, steps_per_level=100, step_size=1e-4),
}
for name, run in runs.items():
    x, info = run()
    assert x.dtype == jnp.float64, (name, x.dtype)
    ed = float(dj.metrics.energy_distance(x, ref))
    assert ed < 0.004, (name, ed)
x = gmm.sample(jax.random.key(2), 8)
import diffrax
tight = diffrax.PIDController(rtol=1e-10, atol=1e-10, norm=dj.likelihood.per_example_max_rms)
logp, _ = dj.likelihood.log_prob(dj.exact_model(gmm, dj.VPSDE(), "score"), x, divergence=dj.likelihood.Exact(),
    prior_log_prob_fn=lambda z: gmm.log_prob(z, dj.VPSDE(), 1.0), stepsize_controller=tight)
err = float(jnp.max(jnp.abs(logp - gmm.log_prob(x, dj.VPSDE(), 1e-5))))
assert logp.dtype == jnp.float64 and err < 1e-6, err
L, net = dj.losses, lambda p, x, t, *labels: x + p
vlb_model = dj.exact_model(gmm, dj.schedules.linear(20), "eps")
losses = jax.jit(lambda key, x: {  # one program: eagerly, every op of every loss compiles on its own
    "dsm": L.dsm(0.0, net, key, x, dj.RectifiedFlow(), prediction="velocity"),
    "ddpm": L.ddpm(0.0, net, key, x, sch),
    "flow_matching": L.flow_matching(0.0, net, key, x),
    "edm": L.edm(0.0, net, key, x),
    "classifier": L.classifier(0.0, lambda p, x, t: x[:, :1] * jnp.arange(3) + p, key, x, jnp.zeros(8, int), dj.VPSDE()),
    "vae_elbo": L.vae_elbo(0.0, L.VAEApply(lambda p, x: (x + p, 0 * x), lambda p, z: z + p), key, x),
    "ddpm_vlb": (L.ddpm_vlb(vlb_model, key, x), None),
})(key, x)
for name, (loss, _) in losses.items():
    assert loss.dtype == jnp.float64, (name, loss.dtype)
print("ok")
"""


def test_float64_enabled_after_import():
    """A notebook user's order: `import diffjax`, then `jax_enable_x64`. Every sampler (energy
    distance at the floor), the Langevin samplers, the likelihood (error < 1e-6 nats at rtol 1e-10
    against the exact density) and every loss run in float64."""
    out = subprocess.run([sys.executable, "-c", X64_AFTER_IMPORT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
