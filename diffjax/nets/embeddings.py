"""Time embeddings: sinusoidal (Vaswani et al. 2017; Ho et al. 2020) and Gaussian-Fourier
features (Tancik et al. 2020; Song et al. 2021).

Both map times `t: [B]` (float, or the integer step of a discrete schedule) to `[B, dim]`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike

from diffjax._checks import as_real_array, check_dtype, check_knob, check_positive_int
from diffjax._typing import DType


class FixedFrequencies(nnx.Variable):
    """A constant, non-trainable array (random Fourier frequencies).

    Not an `nnx.Param`, so `diffjax.nets.split` keeps it out of `params` and no optimiser or
    gradient ever sees it.
    """


def _as_time(t: ArrayLike) -> Array:
    t = as_real_array(t, "t")
    if t.ndim != 1:
        raise ValueError(f"`t` must have shape [B], got {t.shape}.")
    return t.astype(jnp.result_type(float))


def sinusoidal_embedding(t: ArrayLike, dim: int, *, max_period: float = 10_000.0) -> Array:
    r"""Sinusoidal embedding of times `t: [B] -> [B, dim]`.

    With `h = dim // 2` and frequencies $\omega_i = \text{max\_period}^{-i/h}$, $i = 0..h-1$:
    $e(t) = [\sin(\omega_0 t), .., \sin(\omega_{h-1} t), \cos(\omega_0 t), .., \cos(\omega_{h-1} t)]$,
    zero-padded by one column when `dim` is odd.
    """
    dim = check_positive_int(dim, "dim")
    if dim < 2:
        raise ValueError(f"`dim` must be >= 2, got {dim}.")
    t = _as_time(t)
    max_period = float(check_knob(max_period, "max_period", 0.0, strict=True))
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=t.dtype) / half)
    args = t[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class SinusoidalEmbedding(nnx.Module):
    """`t: [B] -> sinusoidal_embedding(time_scale * t, dim): [B, dim]` (no parameters).

    `time_scale` multiplies `t` first: 1 for integer steps `0..T`; about 1000 for continuous
    `t` in `[0, 1]` (DDPM's `t * 999`), so the fast frequencies resolve small times.
    """

    def __init__(self, dim: int, *, time_scale: float = 1.0, max_period: float = 10_000.0):
        self.dim = check_positive_int(dim, "dim")
        if self.dim < 2:
            raise ValueError(f"`dim` must be >= 2, got {dim}.")
        self.time_scale = float(check_knob(time_scale, "time_scale"))
        self.max_period = float(check_knob(max_period, "max_period", 0.0, strict=True))

    def __call__(self, t: ArrayLike) -> Array:
        t = _as_time(t)
        return sinusoidal_embedding(self.time_scale * t, self.dim, max_period=self.max_period)


class GaussianFourierEmbedding(nnx.Module):
    r"""Random Fourier features $[\sin(2\pi W t), \cos(2\pi W t)]$, `t: [B] -> [B, dim]`.

    $W \sim N(0, \text{scale}^2)$ of shape `[dim // 2]` is drawn once at construction and kept
    fixed (a `FixedFrequencies` variable, not a trainable `nnx.Param`). `scale = 16` as in
    Song et al. (2021) suits `t` in `[0, 1]` (or `log sigma`). `dim` must be even.
    """

    def __init__(self, dim: int, *, scale: float = 16.0, rngs: nnx.Rngs):
        dim = check_positive_int(dim, "dim")
        if dim % 2:
            raise ValueError(f"`dim` must be even for Fourier features, got {dim}.")
        scale = float(check_knob(scale, "scale", 0.0, strict=True))
        self.dim = dim
        self.freqs = FixedFrequencies(scale * jax.random.normal(rngs.params(), (dim // 2,)))

    def __call__(self, t: ArrayLike) -> Array:
        t = _as_time(t)
        args = 2.0 * jnp.pi * t[:, None] * self.freqs[...][None, :]
        return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def make_time_embedding(
    kind: str, dim: int, *, time_scale: float = 1.0, rngs: nnx.Rngs
) -> SinusoidalEmbedding | GaussianFourierEmbedding:
    """`"sinusoidal"` or `"fourier"` embedding module of width `dim` (shared by the networks).

    For `"fourier"`, `time_scale` multiplies the frequency scale 16 (Fourier features of
    `time_scale * t`).
    """
    if kind == "sinusoidal":
        return SinusoidalEmbedding(dim, time_scale=time_scale)
    if kind == "fourier":
        return GaussianFourierEmbedding(dim, scale=16.0 * time_scale, rngs=rngs)
    raise ValueError(f"`time_embedding` must be 'sinusoidal' or 'fourier', got {kind!r}.")


class TimeLabelEmbedding(nnx.Module):
    """Conditioning vector `c = MLP(embed(t)) [+ E[y]]: [B, out_dim]` shared by the networks.

    `embed` is the sinusoidal or Fourier embedding of width `embed_dim`, followed by
    `Linear -> SiLU -> Linear` (as in DDPM). With `num_classes` given, a table `E` of
    `num_classes + 1` rows is added; row `num_classes` is the null label used for
    classifier-free guidance, and `y=None` selects it for the whole batch. With `dtype`
    (e.g. bfloat16) the layers compute in it; `embed(t)` stays float32 (its fast frequencies
    need float32's resolution of `time_scale * t`).
    """

    def __init__(
        self,
        out_dim: int,
        *,
        time_embedding: str = "sinusoidal",
        embed_dim: int = 128,
        time_scale: float = 1.0,
        num_classes: int | None = None,
        dtype: DType = None,
        rngs: nnx.Rngs,
    ):
        out_dim = check_positive_int(out_dim, "out_dim")
        embed_dim = check_positive_int(embed_dim, "embed_dim")
        dtype = check_dtype(dtype)
        self.embed = make_time_embedding(
            time_embedding, embed_dim, time_scale=time_scale, rngs=rngs
        )
        self.dense1 = nnx.Linear(embed_dim, out_dim, dtype=dtype, rngs=rngs)
        self.dense2 = nnx.Linear(out_dim, out_dim, dtype=dtype, rngs=rngs)
        self.num_classes = (
            None if num_classes is None else check_positive_int(num_classes, "num_classes")
        )
        self.label_embed = (
            None
            if num_classes is None
            else nnx.Embed(self.num_classes + 1, out_dim, dtype=dtype, rngs=rngs)
        )

    def __call__(self, t: ArrayLike, batch: int, y: ArrayLike | None = None) -> Array:
        t = as_real_array(t, "t")
        if t.ndim == 0:
            t = jnp.broadcast_to(t, (batch,))
        if t.shape != (batch,):
            raise ValueError(
                f"`t` must have shape [B] = [{batch}] (or be a scalar), got {t.shape}."
            )
        c = self.dense2(jax.nn.silu(self.dense1(self.embed(t))))
        if self.label_embed is None:
            if y is not None:
                raise ValueError("`y` was given but the network has no `num_classes`.")
            return c
        if y is None:
            y = jnp.full((batch,), self.num_classes, jnp.int32)
        y = jnp.asarray(y)
        if y.shape != (batch,) or not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(
                f"`y` must be integer labels of shape [B] = [{batch}] in 0..{self.num_classes} "
                f"({self.num_classes} = null label), got dtype {y.dtype} and shape {y.shape}."
            )
        return c + self.label_embed(y)
