"""Time-conditional MLP for vector data `x: [B, dim]` (toy 2-D sets, flattened features)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, ArrayLike

from diffjax._checks import check_dtype, check_positive_int
from diffjax._typing import DType
from diffjax.nets.config import records_config
from diffjax.nets.embeddings import TimeLabelEmbedding


def check_hidden(hidden: Sequence[int], name: str = "hidden") -> tuple[int, ...]:
    """`hidden` as a non-empty tuple of positive ints."""
    if isinstance(hidden, (int, str)) or not isinstance(hidden, Sequence) or not hidden:
        raise TypeError(f"`{name}` must be a non-empty sequence of positive ints, got {hidden!r}.")
    return tuple(check_positive_int(h, name) for h in hidden)


def check_input(x: ArrayLike, event_shape: tuple[int, ...], name: str = "x") -> Array:
    """`x` as a float array of shape `[B, *event_shape]`; `ValueError` naming the shapes otherwise."""
    x = jnp.asarray(x)
    if x.ndim != 1 + len(event_shape) or x.shape[1:] != event_shape:
        raise ValueError(
            f"`{name}` must have shape [B, {', '.join(map(str, event_shape))}], got {x.shape}."
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


@records_config
class MLP(nnx.Module):
    r"""Noise-prediction / score network for vectors: `(x [B, dim], t [B], y [B] | None) -> [B, dim]`.

    $h_0 = W_0 x$; for each hidden layer $i$: $h_i \leftarrow \mathrm{SiLU}(h_i + U_i c)$,
    $h_{i+1} = W_{i+1} h_i$; the output is the last linear map to `dim`. The conditioning
    vector $c$ (`TimeLabelEmbedding`) is the time embedding passed through a 2-layer MLP,
    plus a label embedding when `num_classes` is given (row `num_classes` is the null label,
    selected by `y=None`, for classifier-free guidance).

    Args:
        dim: data dimension.
        hidden: widths of the hidden layers.
        time_embedding: `"sinusoidal"` or `"fourier"` (fixed random frequencies).
        embed_dim: width of the time embedding and of `c`.
        time_scale: `t` is multiplied by it before embedding (see `SinusoidalEmbedding`).
            The default 1000 suits continuous time `t` in `[0, 1]` (SDEs); use 1 for integer
            DDPM steps `1..T`.
        num_classes: number of labels for conditioning, or `None`.
        dtype: the dtype the layers compute in (`"bfloat16"`, `"float16"`; `None`: float32).
            Parameters stay float32 (each layer casts them), the time embedding is computed in
            float32, and the output is cast back to `x`'s dtype: mixed precision
            (Micikevicius et al. 2018, arXiv:1710.03740).
        rngs: `nnx.Rngs` for initialisation.
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: Sequence[int] = (256, 256, 256),
        time_embedding: str = "sinusoidal",
        embed_dim: int = 128,
        time_scale: float = 1000.0,
        num_classes: int | None = None,
        dtype: DType = None,
        rngs: nnx.Rngs,
    ):
        self.dim = check_positive_int(dim, "dim")
        hidden = check_hidden(hidden)
        dtype = check_dtype(dtype)
        self.cond = TimeLabelEmbedding(
            embed_dim,
            time_embedding=time_embedding,
            embed_dim=embed_dim,
            time_scale=time_scale,
            num_classes=num_classes,
            dtype=dtype,
            rngs=rngs,
        )
        widths = (self.dim, *hidden, self.dim)
        self.layers = nnx.List(
            [
                nnx.Linear(a, b, dtype=dtype, rngs=rngs)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.cond_proj = nnx.List(
            [nnx.Linear(embed_dim, h, dtype=dtype, rngs=rngs) for h in hidden]
        )

    def __call__(self, x: ArrayLike, t: ArrayLike, y: ArrayLike | None = None) -> Array:
        x = check_input(x, (self.dim,))
        c = self.cond(t, x.shape[0], y)
        h = self.layers[0](x)
        for proj, layer in zip(self.cond_proj, self.layers[1:], strict=True):
            h = layer(jax.nn.silu(h + proj(c)))
        return h.astype(x.dtype)
