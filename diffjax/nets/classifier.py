"""Noise-conditional classifier `(x_t, t) -> logits of p(y | x_t)` for classifier guidance."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, ArrayLike

from diffjax._checks import check_dtype, check_positive_int
from diffjax._typing import DType
from diffjax.nets.embeddings import TimeLabelEmbedding
from diffjax.nets.mlp import check_hidden, check_input


def check_event_shape(event_shape: int | Sequence[int]) -> tuple[int, ...]:
    """An int `dim` -> `(dim,)`; otherwise a tuple of positive ints of rank 1 or 3 (`H, W, C`)."""
    if isinstance(event_shape, (int, np.integer)) and not isinstance(event_shape, bool):
        event_shape = (event_shape,)
    if not isinstance(event_shape, Sequence) or len(event_shape) not in (1, 3):
        raise ValueError(
            f"`event_shape` must be an int `dim`, `(dim,)` or `(H, W, C)`, got {event_shape!r}."
        )
    return tuple(check_positive_int(s, "event_shape") for s in event_shape)


class Classifier(nnx.Module):
    r"""Time-conditional classifier: `(x [B, *event_shape], t [B]) -> logits [B, num_classes]`.

    Vectors (`event_shape = dim` or `(dim,)`): an MLP with the time conditioning $c$ added
    before each SiLU, as in `MLP`. Images (`event_shape = (H, W, C)`, NHWC): 3x3 stride-2
    convolutions, each followed by $+\,U_i c$, GroupNorm and SiLU, then a global average pool
    and a linear map to the logits. `log_softmax(logits)` estimates $\log p_t(y \mid x_t)$.

    Args:
        event_shape: `dim`, `(dim,)` or `(H, W, C)`.
        num_classes: number of classes.
        hidden: layer widths (vectors) or channels per convolution (images); default
            `(256, 256)` for vectors and `(32, 64)` for images.
        num_groups: GroupNorm groups (images only); each width must be divisible by it.
        time_embedding, embed_dim, time_scale, dtype: as in `MLP` (logits in `x`'s dtype).
        rngs: `nnx.Rngs` for initialisation.
    """

    def __init__(
        self,
        event_shape: int | Sequence[int],
        num_classes: int,
        *,
        hidden: Sequence[int] | None = None,
        num_groups: int = 8,
        time_embedding: str = "sinusoidal",
        embed_dim: int = 128,
        time_scale: float = 1.0,
        dtype: DType = None,
        rngs: nnx.Rngs,
    ):
        self.event_shape = check_event_shape(event_shape)
        self.num_classes = check_positive_int(num_classes, "num_classes")
        self.is_image = len(self.event_shape) == 3
        hidden = check_hidden(
            hidden if hidden is not None else ((32, 64) if self.is_image else (256, 256))
        )
        dtype = check_dtype(dtype)
        self.cond = TimeLabelEmbedding(
            embed_dim,
            time_embedding=time_embedding,
            embed_dim=embed_dim,
            time_scale=time_scale,
            dtype=dtype,
            rngs=rngs,
        )
        kw = dict(dtype=dtype, rngs=rngs)
        self.cond_proj = nnx.List([nnx.Linear(embed_dim, h, **kw) for h in hidden])
        widths = (self.event_shape[-1], *hidden)
        pairs = list(zip(widths[:-1], widths[1:], strict=True))
        if self.is_image:
            num_groups = check_positive_int(num_groups, "num_groups")
            if any(h % num_groups for h in hidden):
                raise ValueError(
                    f"every width in `hidden` must be divisible by `num_groups` = {num_groups}, got {hidden}."
                )
            self.layers = nnx.List([nnx.Conv(a, b, (3, 3), strides=(2, 2), **kw) for a, b in pairs])
            self.norms = nnx.List([nnx.GroupNorm(h, num_groups, **kw) for h in hidden])
        else:
            self.layers = nnx.List([nnx.Linear(a, b, **kw) for a, b in pairs])
            self.norms = None
        self.head = nnx.Linear(hidden[-1], self.num_classes, **kw)

    def __call__(self, x: ArrayLike, t: ArrayLike) -> Array:
        x = check_input(x, self.event_shape)
        c = self.cond(t, x.shape[0])
        h = x
        for i, (layer, proj) in enumerate(zip(self.layers, self.cond_proj, strict=True)):
            if self.is_image:
                h = jax.nn.silu(self.norms[i](layer(h) + proj(c)[:, None, None, :]))
            else:
                h = jax.nn.silu(layer(h) + proj(c))
        if self.is_image:
            h = jnp.mean(h, axis=(1, 2))
        return self.head(h).astype(x.dtype)
