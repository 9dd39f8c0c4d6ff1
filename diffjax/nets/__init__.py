"""Flax NNX networks for diffusion models, and `split` into a pure `(apply, params)` pair.

This is the only part of diffjax that imports Flax. Everything else takes a pure function
`apply(params, x, t[, y])` and a parameter pytree, as returned by `split`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx

from diffjax.nets.classifier import Classifier
from diffjax.nets.config import records_config
from diffjax.nets.embeddings import (
    FixedFrequencies,
    GaussianFourierEmbedding,
    SinusoidalEmbedding,
    TimeLabelEmbedding,
    sinusoidal_embedding,
)
from diffjax.nets.mlp import MLP
from diffjax.nets.unet import UNet
from diffjax.nets.vae import VAE, ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder

__all__ = [
    "MLP",
    "UNet",
    "Classifier",
    "VAE",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
    "SinusoidalEmbedding",
    "GaussianFourierEmbedding",
    "TimeLabelEmbedding",
    "FixedFrequencies",
    "records_config",
    "sinusoidal_embedding",
    "split",
]


def split(model: nnx.Module, *, method: str | None = None) -> tuple[Callable[..., Any], nnx.State]:
    """Turn an NNX module into a pure function and its trainable parameters.

    `graphdef, params, rest = nnx.split(model, nnx.Param, ...)`; the returned
    `apply(params, *args, **kwargs)` runs `nnx.merge(graphdef, params, rest)(*args, **kwargs)`
    (or its `method`, e.g. `"encode"` of a `VAE`). `params` holds only the `nnx.Param`s (an
    `nnx.State`, which is a pytree: `jax.grad`, `optax` and `jax.tree.map` see plain arrays);
    every other variable, such as the fixed Fourier frequencies, is captured in `apply`'s
    closure as a constant, so gradients and optimisers only ever see trainable parameters.
    `split` takes a snapshot: later changes to `model` do not reach `apply`.

    The rest of diffjax sees only `(apply, params)`; a Linen `module.apply` or any plain
    function `fn(params, x, t)` works the same.

    `apply` is pure and `jax.jit`/`vmap`/`grad`-safe; jitted, it traces once per input shape.
    Dropout (off by default: `dropout=0.0`) runs only when a key is passed,
    `apply(params, x, t, key=key)`; without one the network is deterministic (eval mode).

    Example:
        >>> apply, params = split(MLP(2, hidden=(64, 64), rngs=nnx.Rngs(0)))
        >>> eps_hat = apply(params, x, t)            # x: [B, 2], t: [B]
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"`model` must be a flax.nnx.Module, got {type(model).__name__}.")
    if method is not None and not callable(getattr(model, method, None)):
        raise ValueError(f"`method` must name a method of {type(model).__name__}, got {method!r}.")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply(params: nnx.State, *args: Any, **kwargs: Any) -> Any:
        module = nnx.merge(graphdef, params, rest)
        return (module if method is None else getattr(module, method))(*args, **kwargs)

    return apply, params
