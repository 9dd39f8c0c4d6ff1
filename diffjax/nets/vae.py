r"""VAE encoders $q(z \mid x) = N(\mu(x), \mathrm{diag}(\sigma(x)^2))$ and decoders $x = \text{mean}(z)$.

Encoders map `x: [B, *event_shape] -> (mean, log_std)`, each `[B, latent_dim]`; decoders map
`z: [B, latent_dim] -> x_mean: [B, *event_shape]`. The ELBO lives in `diffjax.losses`.
Each takes `dtype` as `nets.MLP` does: the layers compute in it (`"bfloat16"`, `"float16"`;
`None`: float32) with float32 parameters, and the outputs come back in the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike

from diffjax._checks import check_dtype, check_positive_int
from diffjax._typing import DType
from diffjax.nets.classifier import check_event_shape
from diffjax.nets.mlp import check_hidden, check_input


def _any_event_shape(event_shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(event_shape, (int, np.integer)) and not isinstance(event_shape, bool):
        event_shape = (event_shape,)
    if not isinstance(event_shape, Sequence) or not event_shape:
        raise ValueError(
            f"`event_shape` must be an int or a non-empty tuple of ints, got {event_shape!r}."
        )
    return tuple(check_positive_int(s, "event_shape") for s in event_shape)


def _image_shape(event_shape) -> tuple[int, int, int]:
    shape = check_event_shape(event_shape)
    if len(shape) != 3:
        raise ValueError(
            f"`event_shape` must be (H, W, C) for a convolutional VAE, got {event_shape!r}."
        )
    return shape


def _mlp(widths: Sequence[int], dtype: DType, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List(
        [
            nnx.Linear(a, b, dtype=dtype, rngs=rngs)
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        ]
    )


def _run_mlp(layers: nnx.List, h: Array) -> Array:
    for layer in layers[:-1]:
        h = jax.nn.silu(layer(h))
    return layers[-1](h)


def _split_moments(h: Array, dtype) -> tuple[Array, Array]:
    mean, log_std = jnp.split(h.astype(dtype), 2, axis=-1)
    return mean, log_std


class MLPEncoder(nnx.Module):
    """`x: [B, *event_shape] -> (mean, log_std): [B, latent_dim]` each; flattens `x`, SiLU MLP."""

    def __init__(
        self,
        event_shape: int | Sequence[int],
        latent_dim: int,
        *,
        hidden: Sequence[int] = (256, 256),
        dtype: DType = None,
        rngs: nnx.Rngs,
    ):
        self.event_shape = _any_event_shape(event_shape)
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        widths = (math.prod(self.event_shape), *check_hidden(hidden), 2 * self.latent_dim)
        self.layers = _mlp(widths, check_dtype(dtype), rngs)

    def __call__(self, x: ArrayLike) -> tuple[Array, Array]:
        x = check_input(x, self.event_shape)
        return _split_moments(_run_mlp(self.layers, x.reshape(x.shape[0], -1)), x.dtype)


class MLPDecoder(nnx.Module):
    """`z: [B, latent_dim] -> x_mean: [B, *event_shape]` (SiLU MLP, linear output)."""

    def __init__(
        self,
        latent_dim: int,
        event_shape: int | Sequence[int],
        *,
        hidden: Sequence[int] = (256, 256),
        dtype: DType = None,
        rngs: nnx.Rngs,
    ):
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.event_shape = _any_event_shape(event_shape)
        widths = (self.latent_dim, *check_hidden(hidden), math.prod(self.event_shape))
        self.layers = _mlp(widths, check_dtype(dtype), rngs)

    def __call__(self, z: ArrayLike) -> Array:
        z = check_input(z, (self.latent_dim,), "z")
        return _run_mlp(self.layers, z).reshape(z.shape[0], *self.event_shape).astype(z.dtype)


def _halvings(size: int, n: int) -> list[int]:
    """Spatial sizes after 0..n stride-2 SAME convolutions: `s_{i+1} = ceil(s_i / 2)`."""
    sizes = [size]
    for _ in range(n):
        sizes.append(-(-sizes[-1] // 2))
    return sizes


class ConvEncoder(nnx.Module):
    """NHWC `x: [B, H, W, C] -> (mean, log_std): [B, latent_dim]` each.

    One 3x3 stride-2 convolution + SiLU per entry of `channels` (sizes round up: 28 -> 14 -> 7),
    then flatten and a linear map to `2 * latent_dim`.
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        latent_dim: int,
        *,
        channels: Sequence[int] = (32, 64),
        dtype: DType = None,
        rngs: nnx.Rngs,
    ):
        self.event_shape = _image_shape(event_shape)
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        channels = check_hidden(channels, "channels")
        dtype = check_dtype(dtype)
        h, w, c = self.event_shape
        widths = (c, *channels)
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, (3, 3), strides=(2, 2), dtype=dtype, rngs=rngs)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        flat = _halvings(h, len(channels))[-1] * _halvings(w, len(channels))[-1] * channels[-1]
        self.head = nnx.Linear(flat, 2 * self.latent_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: ArrayLike) -> tuple[Array, Array]:
        x = check_input(x, self.event_shape)
        h = x
        for conv in self.convs:
            h = jax.nn.silu(conv(h))
        return _split_moments(self.head(h.reshape(h.shape[0], -1)), x.dtype)


class ConvDecoder(nnx.Module):
    """`z: [B, latent_dim] -> x_mean: [B, H, W, C]`, mirroring `ConvEncoder`.

    A linear map to the encoder's smallest feature map, then per entry of `channels` a
    nearest-neighbour resize to the next larger size of the encoder and a 3x3 convolution +
    SiLU, then a 3x3 convolution to `C` channels (linear output).
    """

    def __init__(
        self,
        latent_dim: int,
        event_shape: Sequence[int],
        *,
        channels: Sequence[int] = (64, 32),
        dtype: DType = None,
        rngs: nnx.Rngs,
    ):
        self.latent_dim = check_positive_int(latent_dim, "latent_dim")
        self.event_shape = _image_shape(event_shape)
        channels = check_hidden(channels, "channels")
        dtype = check_dtype(dtype)
        h, w, c = self.event_shape
        n = len(channels)
        self.sizes = list(zip(_halvings(h, n)[::-1], _halvings(w, n)[::-1], strict=True))
        self.start_channels = channels[0]
        h0, w0 = self.sizes[0]
        self.head = nnx.Linear(self.latent_dim, h0 * w0 * channels[0], dtype=dtype, rngs=rngs)
        widths = (channels[0], *channels)
        self.convs = nnx.List(
            [
                nnx.Conv(a, b, (3, 3), dtype=dtype, rngs=rngs)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.conv_out = nnx.Conv(channels[-1], c, (3, 3), dtype=dtype, rngs=rngs)

    def __call__(self, z: ArrayLike) -> Array:
        z = check_input(z, (self.latent_dim,), "z")
        h0, w0 = self.sizes[0]
        h = jax.nn.silu(self.head(z)).reshape(z.shape[0], h0, w0, self.start_channels)
        for conv, (hi, wi) in zip(self.convs, self.sizes[1:], strict=True):
            h = jax.image.resize(h, (h.shape[0], hi, wi, h.shape[-1]), method="nearest")
            h = jax.nn.silu(conv(h))
        return self.conv_out(h).astype(z.dtype)


class VAE(nnx.Module):
    r"""An encoder/decoder pair with the reparameterised forward pass.

    `__call__(x, eps) -> (x_mean, mean, log_std)` with $z = \mu(x) + \sigma(x) \odot \epsilon$,
    `eps: [B, latent_dim]` standard normal noise drawn by the caller (so the pass is pure).
    `encode` / `decode` are the two halves; `split(vae, method="encode")` makes pure
    functions of them.
    """

    def __init__(self, encoder: nnx.Module, decoder: nnx.Module):
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, x: ArrayLike) -> tuple[Array, Array]:
        return self.encoder(x)

    def decode(self, z: ArrayLike) -> Array:
        return self.decoder(z)

    def __call__(self, x: ArrayLike, eps: ArrayLike) -> tuple[Array, Array, Array]:
        mean, log_std = self.encoder(x)
        eps = jnp.asarray(eps)
        if eps.shape != mean.shape:
            raise ValueError(
                f"`eps` must have shape [B, latent_dim] = {mean.shape}, got {eps.shape}."
            )
        z = mean + jnp.exp(log_std) * eps
        return self.decoder(z), mean, log_std
