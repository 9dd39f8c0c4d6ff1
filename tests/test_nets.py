"""Tests for diffjax.nets: shapes at every resolution, one trace per shape, `split`, conditioning."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import optimizations

from diffjax import nets


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


@pytest.fixture(autouse=True, scope="module")
def _quick_compiles():
    """XLA's optimisation passes off: these tests are compile-bound (shapes, traces, small
    inputs); the file runs in 70 s instead of 110 s."""
    with optimizations(False):
        yield


def traced(apply):
    """`jax.jit(apply)` plus a list that grows by one at every trace."""
    traces = []

    def fn(*args, **kwargs):
        traces.append(1)
        return apply(*args, **kwargs)

    return jax.jit(fn), traces


def leaves_with_paths(tree):
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


# ---------------------------------------------------------------------------- embeddings


def test_sinusoidal_embedding_formula():
    t = jnp.array([0.0, 3.0, 250.0])
    dim, half = 6, 3
    emb = nets.sinusoidal_embedding(t, dim)
    assert emb.shape == (3, dim)
    for b, tb in enumerate([0.0, 3.0, 250.0]):
        for i in range(half):
            w = 10_000.0 ** (-i / half)
            np.testing.assert_allclose(emb[b, i], math.sin(w * tb), atol=1e-5)
            np.testing.assert_allclose(emb[b, half + i], math.cos(w * tb), atol=1e-5)
    odd = nets.sinusoidal_embedding(jnp.array([1, 2]), 7)  # integer steps are accepted
    assert odd.shape == (2, 7) and odd.dtype == jnp.float32
    np.testing.assert_array_equal(odd[:, -1], 0.0)
    np.testing.assert_allclose(
        nets.SinusoidalEmbedding(6, time_scale=1000.0)(jnp.array([0.003])),
        nets.sinusoidal_embedding(jnp.array([3.0]), 6),
        atol=1e-5,
    )


def test_fourier_embedding_fixed_frequencies():
    emb = nets.GaussianFourierEmbedding(8, scale=2.0, rngs=nnx.Rngs(0))
    t = jnp.array([0.0, 0.5])
    out = emb(t)
    assert out.shape == (2, 8)
    w = emb.freqs[...]
    assert isinstance(emb.freqs, nets.FixedFrequencies) and w.shape == (4,)
    np.testing.assert_allclose(
        out[1], jnp.concatenate([jnp.sin(jnp.pi * w), jnp.cos(jnp.pi * w)]), atol=1e-5
    )


def test_embedding_errors():
    with pytest.raises(ValueError, match=r"[`']t[`']"):
        nets.sinusoidal_embedding(jnp.ones((2, 1)), 4)
    with pytest.raises(ValueError, match=r"[`']dim[`']"):
        nets.sinusoidal_embedding(jnp.ones(2), 1)
    with pytest.raises(ValueError, match=r"[`']dim[`']"):
        nets.GaussianFourierEmbedding(5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"[`']time_embedding[`']"):
        nets.MLP(2, time_embedding="learned", rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------- MLP and split


@pytest.fixture(scope="module")
def cond_mlp():
    return nets.MLP(
        2, hidden=(16, 16), time_embedding="fourier", embed_dim=8, num_classes=3, rngs=nnx.Rngs(0)
    )


def test_mlp_shapes_and_single_trace():
    apply, params = nets.split(nets.MLP(3, hidden=(16, 16, 16), embed_dim=8, rngs=nnx.Rngs(0)))
    fn, traces = traced(apply)
    x, t = jnp.ones((5, 3)), jnp.linspace(0.0, 1.0, 5)
    assert fn(params, x, t).shape == (5, 3)
    fn(params, x + 1.0, t * 2.0)
    assert len(traces) == 1
    assert fn(params, jnp.ones((7, 3)), jnp.ones(7)).shape == (7, 3)
    assert len(traces) == 2
    assert apply(params, x, 0.5).shape == (5, 3)  # a scalar time broadcasts over the batch


def test_split_pure_grads_and_fixed_frequencies(cond_mlp):
    apply, params = nets.split(cond_mlp)
    x = jax.random.normal(jax.random.key(1), (6, 2))
    t = jnp.linspace(0.01, 1.0, 6)
    y = jnp.array([0, 1, 2, 0, 1, 2])
    np.testing.assert_array_equal(apply(params, x, t, y), apply(params, x, t, y))
    # Fourier frequencies are not trainable: absent from params, kept in the closure.
    names = leaves_with_paths(params)
    assert not any("freqs" in name for name in names)
    assert all(
        isinstance(v, nnx.Param)
        for v in jax.tree.leaves(params, is_leaf=lambda v: isinstance(v, nnx.Variable))
    )
    grads = jax.grad(lambda p: jnp.sum(apply(p, x, t, y) ** 2))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for name, g in leaves_with_paths(grads).items():
        assert bool(jnp.all(jnp.isfinite(g))), name
        assert bool(jnp.any(g != 0)), name


def test_class_conditioning_and_null_label(cond_mlp):
    apply, params = nets.split(cond_mlp)
    x, t = jnp.ones((3, 2)), jnp.full((3,), 0.3)
    outs = [apply(params, x, t, jnp.full((3,), k, jnp.int32)) for k in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.allclose(outs[a], outs[b])
    np.testing.assert_allclose(apply(params, x, t), outs[3])  # y=None is the null label 3
    with pytest.raises(ValueError, match=r"[`']y[`']"):
        apply(params, x, t, jnp.zeros((2,), jnp.int32))
    plain_apply, plain_params = nets.split(nets.MLP(2, hidden=(4,), embed_dim=4, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"[`']y[`']"):
        plain_apply(plain_params, x, t, jnp.zeros((3,), jnp.int32))


def test_input_validation(cond_mlp):
    apply, params = nets.split(cond_mlp)
    with pytest.raises(ValueError, match=r"[`']x[`']"):
        apply(params, jnp.ones((3, 4)), jnp.ones(3))
    with pytest.raises(ValueError, match=r"[`']t[`']"):
        apply(params, jnp.ones((3, 2)), jnp.ones(4))
    with pytest.raises(TypeError, match=r"[`']model[`']"):
        nets.split(lambda x: x)
    with pytest.raises(ValueError, match=r"[`']method[`']"):
        nets.split(cond_mlp, method="nope")
    with pytest.raises(TypeError, match=r"[`']hidden[`']"):
        nets.MLP(2, hidden=16, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"[`']dim[`']"):
        nets.MLP(0, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------- U-Net


@pytest.mark.parametrize(
    ("in_channels", "channel_mults"),
    [(1, (1, 2, 2, 2)), (3, (1, 2))],  # 4 levels: 28 -> 14 -> 7 -> 4 and back
)
def test_unet_shapes_every_resolution_single_trace(in_channels, channel_mults):
    model = nets.UNet(
        in_channels, channels=8, channel_mults=channel_mults, num_groups=4, rngs=nnx.Rngs(0)
    )
    apply, params = nets.split(model)
    fn, traces = traced(apply)
    for i, size in enumerate((8, 28)):
        x = jax.random.normal(jax.random.key(size), (2, size, size, in_channels))
        out = fn(params, x, jnp.array([1.0, 500.0]))
        assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))
        fn(params, -x, jnp.array([3.0, 7.0]))
        assert len(traces) == i + 1


def test_unet_dropout_conditioning_and_errors():
    model = nets.UNet(
        1,
        channels=8,
        channel_mults=(1, 2),
        dropout=0.5,
        num_classes=2,
        num_groups=4,
        rngs=nnx.Rngs(0),
    )
    apply, params = nets.split(model)
    x, t = jax.random.normal(jax.random.key(0), (2, 8, 8, 1)), jnp.array([0.2, 0.7])
    base = apply(params, x, t)
    np.testing.assert_array_equal(base, apply(params, x, t))  # no key: deterministic
    k = jax.random.key(3)
    np.testing.assert_array_equal(apply(params, x, t, key=k), apply(params, x, t, key=k))
    assert not np.allclose(apply(params, x, t, key=k), base)
    assert not np.allclose(
        apply(params, x, t, jnp.array([0, 0])), apply(params, x, t, jnp.array([1, 1]))
    )
    np.testing.assert_allclose(apply(params, x, t, jnp.array([2, 2])), base)
    with pytest.raises(ValueError, match=r"[`']x[`']"):
        apply(params, jnp.ones((2, 8, 8, 3)), t)
    with pytest.raises(ValueError, match=r"[`']num_groups[`']"):
        nets.UNet(1, channels=6, num_groups=4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"[`']attention_levels[`']"):
        nets.UNet(1, channels=8, attention_levels=(2,), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"[`']dropout[`']"):
        nets.UNet(1, channels=8, dropout=1.0, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------- classifier and VAE


@pytest.mark.parametrize(("event_shape", "hidden"), [(2, (16, 16)), ((8, 8, 1), (8, 8))])
def test_classifier_logits_single_trace(event_shape, hidden):
    model = nets.Classifier(
        event_shape, 5, hidden=hidden, embed_dim=8, num_groups=4, rngs=nnx.Rngs(0)
    )
    apply, params = nets.split(model)
    fn, traces = traced(apply)
    shape = (4, event_shape) if isinstance(event_shape, int) else (4, *event_shape)
    x = jax.random.normal(jax.random.key(0), shape)
    assert fn(params, x, jnp.ones(4)).shape == (4, 5)
    fn(params, x * 2.0, jnp.zeros(4))
    assert len(traces) == 1
    with pytest.raises(ValueError, match=r"[`']event_shape[`']"):
        nets.Classifier((8, 8), 5, rngs=nnx.Rngs(0))


def test_vae_shapes():
    latent = 3
    for size in (8, 28, 32):
        shape = (size, size, 1)
        vae = nets.VAE(
            nets.ConvEncoder(shape, latent, channels=(4, 8), rngs=nnx.Rngs(0)),
            nets.ConvDecoder(latent, shape, channels=(8, 4), rngs=nnx.Rngs(1)),
        )
        apply, params = nets.split(vae)
        x = jnp.ones((2, *shape))
        x_mean, mean, log_std = apply(params, x, jnp.zeros((2, latent)))
        assert x_mean.shape == x.shape and mean.shape == log_std.shape == (2, latent)
    vae = nets.VAE(
        nets.MLPEncoder((8, 8, 1), latent, hidden=(16,), rngs=nnx.Rngs(0)),
        nets.MLPDecoder(latent, (8, 8, 1), hidden=(16,), rngs=nnx.Rngs(1)),
    )
    encode, params = nets.split(vae, method="encode")
    decode, _ = nets.split(vae, method="decode")
    mean, log_std = encode(params, jnp.ones((2, 8, 8, 1)))
    assert mean.shape == log_std.shape == (2, latent)
    assert decode(params, mean).shape == (2, 8, 8, 1)
    apply, _ = nets.split(vae)
    # the reparameterised pass decodes z = mean + exp(log_std) * eps
    eps = jnp.ones((2, latent))
    np.testing.assert_allclose(
        apply(params, jnp.ones((2, 8, 8, 1)), eps)[0],
        decode(params, mean + jnp.exp(log_std) * eps),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match=r"[`']eps[`']"):
        apply(params, jnp.ones((2, 8, 8, 1)), jnp.ones((2, latent + 1)))
    with pytest.raises(ValueError, match=r"[`']event_shape[`']"):
        nets.ConvEncoder((8, 8), latent, rngs=nnx.Rngs(0))


def test_mlp_default_time_scale_resolves_continuous_time():
    """With the default `time_scale`, the MLP's time embedding tells apart continuous times
    0.01 apart anywhere in [0, 1] (relative distance > 0.3); at `time_scale=1` (integer
    steps) the same times are nearly indistinguishable (< 0.05)."""
    t = jnp.linspace(0.0, 1.0, 101)

    def min_relative_step(mlp):
        e = mlp.cond.embed(t)
        steps = jnp.linalg.norm(e[1:] - e[:-1], axis=-1) / jnp.linalg.norm(e[:-1], axis=-1)
        return float(steps.min())

    assert min_relative_step(nets.MLP(2, rngs=nnx.Rngs(0))) > 0.3
    assert min_relative_step(nets.MLP(2, time_scale=1.0, rngs=nnx.Rngs(0))) < 0.05
