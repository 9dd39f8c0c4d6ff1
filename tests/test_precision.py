"""Mixed precision (issue 16): networks computed in bfloat16, parameters and samplers in float32.

Two switches: `dtype=` on the `diffjax.nets` networks (training and sampling), and
`model.mixed_precision` / `Model(compute_dtype=...)` for any model function, the exact
mixture models included. Checked against the exact eight Gaussians: a bfloat16 exact model
reaches the same energy-distance floor and per-mode stds that the float32 samplers are held to
(`test_samplers.py`), and an MLP trained in bfloat16 ends where the float32 one does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest
from badinput import Row, table_test
from flax import nnx
from helpers import assert_matches_mixture

import diffjax as dj
from diffjax import losses, nets, samplers, training
from diffjax.metrics import energy_distance
from diffjax.model import mixed_precision

N = 4000
VP = dj.VPSDE.from_ddpm(1000)


def _floats(tree) -> set:
    return {leaf.dtype for leaf in jax.tree.leaves(tree)}


def test_exact_model_in_bfloat16_reaches_the_floor(eight_gaussians):
    """The exact eps model of the eight Gaussians computed in bfloat16 (inputs, mixture and
    process arrays, hence `alpha(t)`, `sigma(t)` and the posterior) differs from float32 by
    bfloat16 round-off, and DPM-Solver++ (20 steps, as in `test_samplers.py`) still meets the
    float32 thresholds: energy distance < 0.003, per-mode stds within 5% (measured, key 0:
    0.00015 and 1.037 in bfloat16; 0.00015 and 1.038 in float32), with float32 states."""
    exact = dj.exact_model(eight_gaussians, VP, "eps")
    model = mixed_precision(exact, "bfloat16")
    assert model.compute_dtype == jnp.bfloat16 and exact.compute_dtype is None

    x0 = eight_gaussians.sample(jax.random.key(3), 512)
    t = jnp.linspace(1e-3, 1.0, 512)
    a, s = VP.marginal(t)
    x_t = a[:, None] * x0 + s[:, None] * jax.random.normal(jax.random.key(4), x0.shape)
    out, ref_out = jax.jit(lambda x, t: (model(x, t), exact(x, t)))(x_t, t)
    assert out.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(out - ref_out)) / jnp.max(jnp.abs(ref_out)))
    assert 1e-4 < err < 2.0**-5, err  # bfloat16 (eps 2^-8) round-off, far above float32's

    x, info = samplers.dpm_solver(jax.random.key(0), model, (N, 2), num_steps=20, save_times=[0.5])
    assert x.dtype == jnp.float32 and info.trajectory.dtype == jnp.float32
    assert_matches_mixture(x, eight_gaussians, eight_gaussians.sample(jax.random.key(1), N))


@pytest.fixture(scope="module")
def trained(eight_gaussians):
    """The same MLP (same init seed, data and keys) trained 300 steps by `make_train_step` with
    DSM (eps, VP) in float32 and with `dtype="bfloat16"`; then 10-step DPM-Solver++ samples
    from the same prior draw. `{dtype: (params, per-step losses, samples)}`."""
    steps, batch = 300, 256
    data = eight_gaussians.sample(jax.random.key(1), steps * batch).reshape(steps, batch, 2)
    keys = jax.random.split(jax.random.key(2), steps)
    opt = optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.adam(optax.cosine_decay_schedule(3e-3, steps, alpha=0.05)),
    )
    out = {}
    for dtype in ("float32", "bfloat16"):
        net = nets.MLP(2, hidden=(64, 64), embed_dim=32, dtype=dtype, rngs=nnx.Rngs(0))
        apply, params = nets.split(net)
        sde = dj.VPSDE()
        step = training.make_train_step(
            lambda p, b, k, apply=apply, sde=sde: losses.dsm(p, apply, k, b, sde, t_eps=1e-3), opt
        )
        run = jax.jit(
            lambda s, d, k, step=step: jax.lax.scan(lambda s, xs: step(s, *xs), s, (d, k))
        )
        state, metrics = run(training.create_train_state(params, opt), data, keys)
        assert int(metrics["nonfinite"].sum()) == 0
        model = dj.Model(apply, sde, "eps", params=state.params)
        x, _ = samplers.dpm_solver(jax.random.key(5), model, (N, 2), num_steps=10)
        out[dtype] = (state.params, metrics["loss"], x)
    return out


def test_bfloat16_training_keeps_float32_params_and_matches_float32(trained):
    """Gradients w.r.t. float32 parameters through a bfloat16 network: the parameters stay
    float32, and the mean training loss of the last 100 steps (same batches and noise) is within
    1% of float32's (measured: 0.2757 and 0.2758, 0.02% apart; an untrained network's is ~1)."""
    (p32, loss32, _), (p16, loss16, _) = trained["float32"], trained["bfloat16"]
    assert _floats(p16) == _floats(p32) == {jnp.dtype(jnp.float32)}
    late32, late16 = float(loss32[-100:].mean()), float(loss16[-100:].mean())
    assert late32 < 0.5 and abs(late16 - late32) < 0.01 * late32, (late32, late16)


def test_bfloat16_network_samples_match_float32(trained):
    """Samples of the two trained networks from the same prior draw: energy distance below the
    4000-sample noise level 0.003, and paired differences far below the modes' std 0.1
    (measured: rms 0.0085; each set is at energy distance 0.035 from the truth)."""
    (_, _, x32), (_, _, x16) = trained["float32"], trained["bfloat16"]
    assert x16.dtype == jnp.float32
    assert float(energy_distance(x32, x16)) < 0.003
    rms = float(jnp.sqrt(jnp.mean((x16 - x32) ** 2)))
    assert rms < 0.02, rms


def _products(jaxpr):
    """`(operand dtypes, output dtype)` of every matrix product and convolution in `jaxpr`,
    nested jaxprs (`jit`, `custom_jvp`) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
            yield tuple(v.aval.dtype for v in eqn.invars), eqn.outvars[0].aval.dtype
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _products(inner)


BF16, F32 = jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float32)


def _vae(encoder, decoder):
    return nets.VAE(encoder(dtype="bfloat16", rngs=nnx.Rngs(0)), decoder(dtype="bfloat16", rngs=nnx.Rngs(1)))


@pytest.mark.parametrize(
    ("build", "shapes"),
    [
        (
            lambda: nets.MLP(2, hidden=(16,), embed_dim=8, dtype="bfloat16", rngs=nnx.Rngs(0)),
            [(4, 2), (4,)],
        ),
        (
            lambda: nets.UNet(1, channels=8, dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
            [(2, 8, 8, 1), (2,)],
        ),
        (
            lambda: nets.Classifier((8, 8, 1), 3, hidden=(8,), dtype="bfloat16", rngs=nnx.Rngs(0)),
            [(2, 8, 8, 1), (2,)],
        ),
        (  # (x, eps) -> (x_mean, mean, log_std)
            lambda: _vae(
                lambda **kw: nets.MLPEncoder(4, 2, hidden=(8,), **kw),
                lambda **kw: nets.MLPDecoder(2, 4, hidden=(8,), **kw),
            ),
            [(3, 4), (3, 2)],
        ),
        (
            lambda: _vae(
                lambda **kw: nets.ConvEncoder((8, 8, 1), 2, channels=(4,), **kw),
                lambda **kw: nets.ConvDecoder(2, (8, 8, 1), channels=(4,), **kw),
            ),
            [(3, 8, 8, 1), (3, 2)],
        ),
    ],
    ids=["mlp", "unet", "classifier", "mlp-vae", "conv-vae"],
)
def test_network_computes_in_bfloat16_with_float32_params(build, shapes):
    """A network built with `dtype=bfloat16` (abstractly: traced, never run) keeps float32
    parameters, multiplies and convolves bfloat16 operands (the attention logits accumulate in
    float32), and returns float32."""
    net = nnx.eval_shape(build)
    apply, params = nets.split(net)
    jaxpr = jax.make_jaxpr(apply)(params, *(jax.ShapeDtypeStruct(s, F32) for s in shapes))
    assert _floats(params) == {F32}
    assert {a.dtype for a in jaxpr.out_avals} == {F32}
    products = set(_products(jaxpr.jaxpr))
    assert products and {operands for operands, _ in products} == {(BF16, BF16)}, products
    assert {out for _, out in products} <= {BF16, F32}
    if hasattr(net, "config"):
        assert net.config["dtype"] == "bfloat16"


EXACT = dj.exact_model(dj.gaussian(jnp.zeros(2), 1.0), dj.VPSDE(), "eps")
BAD_DTYPES = [
    Row("mlp-dtype-int", lambda: nets.MLP(2, dtype="int8", rngs=nnx.Rngs(0)), "dtype", "range"),
    Row("mlp-dtype-number", lambda: nets.MLP(2, dtype=3, rngs=nnx.Rngs(0)), "dtype", "dtype"),
    Row(
        "unet-dtype-f64", lambda: nets.UNet(1, dtype="float64", rngs=nnx.Rngs(0)), "dtype", "range"
    ),
    Row(
        "classifier-dtype-name",
        lambda: nets.Classifier(2, 3, dtype="bf16", rngs=nnx.Rngs(0)),
        "dtype",
        "dtype",
    ),
    Row(
        "model-compute_dtype-int",
        lambda: dj.Model(EXACT.fn, EXACT.process, "eps", compute_dtype=jnp.int32),
        "compute_dtype",
        "range",
    ),
    Row("mixed_precision-dtype-f64", lambda: mixed_precision(EXACT, "float64"), "dtype", "range"),
    Row("mixed_precision-dtype-bool", lambda: mixed_precision(EXACT, True), "dtype", "dtype"),
    Row("mixed_precision-model", lambda: mixed_precision(EXACT.fn), "model", "type"),
]
test_bad_dtypes = table_test(BAD_DTYPES)
