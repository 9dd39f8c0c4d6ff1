"""U-Net for images in NHWC, `(x [B, H, W, C], t [B], y [B] | None) -> [B, H, W, C]` (DDPM-style)."""

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
from diffjax.nets.mlp import check_hidden


class ResBlock(nnx.Module):
    r"""$h = \mathrm{Conv}(\mathrm{SiLU}(\mathrm{GN}(x))) + W c$;
    $\text{out} = \mathrm{skip}(x) + \mathrm{Conv}(\mathrm{Dropout}(\mathrm{SiLU}(\mathrm{GN}(h))))$.

    `x: [B, H, W, C_in]`, conditioning `c: [B, cond_dim]` -> `[B, H, W, C_out]`; `skip` is a
    1x1 convolution when `C_in != C_out`. Dropout is active only when `key` is given.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        cond_dim: int,
        *,
        num_groups: int,
        dropout: float,
        dtype: DType,
        rngs: nnx.Rngs,
    ):
        kw = dict(dtype=dtype, rngs=rngs)
        self.norm1 = nnx.GroupNorm(in_ch, num_groups, **kw)
        self.conv1 = nnx.Conv(in_ch, out_ch, (3, 3), **kw)
        self.cond_proj = nnx.Linear(cond_dim, out_ch, **kw)
        self.norm2 = nnx.GroupNorm(out_ch, num_groups, **kw)
        self.dropout = nnx.Dropout(dropout)
        self.conv2 = nnx.Conv(out_ch, out_ch, (3, 3), **kw)
        self.skip = nnx.Conv(in_ch, out_ch, (1, 1), **kw) if in_ch != out_ch else None

    def __call__(self, x: Array, c: Array, key: Array | None = None) -> Array:
        h = self.conv1(jax.nn.silu(self.norm1(x)))
        h = h + self.cond_proj(c)[:, None, None, :]
        h = jax.nn.silu(self.norm2(h))
        h = self.dropout(h, deterministic=key is None, rngs=key)
        h = self.conv2(h)
        return (x if self.skip is None else self.skip(x)) + h


class AttentionBlock(nnx.Module):
    r"""Single-head self-attention over the `H*W` positions, with a residual connection.

    $q, k, v = W_{qkv}\,\mathrm{GN}(x)$, $\text{out} = x + W_o\,\mathrm{softmax}(q k^T / \sqrt{C})\,v$;
    `[B, H, W, C] -> [B, H, W, C]` (`jax.nn.dot_product_attention`).
    """

    def __init__(self, ch: int, *, num_groups: int, dtype: DType, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(ch, num_groups, dtype=dtype, rngs=rngs)
        self.qkv = nnx.Linear(ch, 3 * ch, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(ch, ch, dtype=dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b, h, w, ch = x.shape
        q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(b, h * w, 1, 3 * ch), 3, axis=-1)
        a = jax.nn.dot_product_attention(q, k, v).reshape(b, h, w, ch)
        return x + self.out(a)


class Block(nnx.Module):
    """A `ResBlock` optionally followed by an `AttentionBlock`."""

    def __init__(self, in_ch, out_ch, cond_dim, *, attention, num_groups, dropout, dtype, rngs):
        self.res = ResBlock(
            in_ch, out_ch, cond_dim, num_groups=num_groups, dropout=dropout, dtype=dtype, rngs=rngs
        )
        self.attn = (
            AttentionBlock(out_ch, num_groups=num_groups, dtype=dtype, rngs=rngs)
            if attention
            else None
        )

    def __call__(self, x: Array, c: Array, key: Array | None) -> Array:
        x = self.res(x, c, key)
        return x if self.attn is None else self.attn(x)


@records_config
class UNet(nnx.Module):
    r"""DDPM-style U-Net on NHWC images: `(x [B, H, W, C], t [B], y [B] | None) -> [B, H, W, C]`.

    Level `i` (of `len(channel_mults)`) works at `channels * channel_mults[i]` channels and
    resolution `ceil(H / 2^i)`: `num_res_blocks` residual blocks (GroupNorm, SiLU, the
    conditioning vector added after the first convolution), then a stride-2 convolution
    (SAME padding, so odd sizes round up: 28 -> 14 -> 7 -> 4). The middle has
    ResBlock-Attention-ResBlock. The up path mirrors it with `num_res_blocks + 1` blocks per
    level, each taking a skip connection by concatenation, and upsamples by nearest-neighbour
    resizing to the skip's exact spatial shape followed by a 3x3 convolution, so any `H, W`
    works. Self-attention follows each block at the levels in `attention_levels`.

    Args:
        in_channels: `C` of the images (the output has the same shape as the input).
        channels: base width; every `channels * m` must be divisible by `num_groups`.
        channel_mults: width multiplier per level.
        num_res_blocks: residual blocks per level on the way down.
        attention_levels: indices (negative allowed) of the levels with self-attention; the
            default `(-1,)` is the lowest resolution. `()` keeps only the middle attention.
        num_groups: GroupNorm groups.
        dropout: dropout rate inside the residual blocks; dropout only runs when
            `__call__(..., key=...)` is given a key (deterministic otherwise).
        time_embedding, time_scale, num_classes, dtype: as in `MLP` (with `dtype`, GroupNorm
            statistics and the attention softmax stay float32); the conditioning width is
            `4 * channels`.
        rngs: `nnx.Rngs` for initialisation.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (-1,),
        num_groups: int = 8,
        dropout: float = 0.0,
        time_embedding: str = "sinusoidal",
        time_scale: float = 1.0,
        num_classes: int | None = None,
        dtype: DType = None,
        rngs: nnx.Rngs,
    ):
        self.in_channels = check_positive_int(in_channels, "in_channels")
        channels = check_positive_int(channels, "channels")
        mults = check_hidden(channel_mults, "channel_mults")
        self.num_res_blocks = check_positive_int(num_res_blocks, "num_res_blocks")
        num_groups = check_positive_int(num_groups, "num_groups")
        if any(channels * m % num_groups for m in mults):
            raise ValueError(
                f"`channels * m` must be divisible by `num_groups` = {num_groups} for every m in "
                f"`channel_mults`; got channels={channels}, channel_mults={mults}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout}.")
        num_levels = len(mults)
        attn = set()
        for level in attention_levels:
            if not -num_levels <= level < num_levels:
                raise ValueError(
                    f"`attention_levels` entries must index `channel_mults` (length {num_levels}), got {level}."
                )
            attn.add(level % num_levels)
        self.num_levels = num_levels
        cond_dim = 4 * channels
        dtype = check_dtype(dtype)
        kw = dict(num_groups=num_groups, dropout=dropout, dtype=dtype, rngs=rngs)

        self.cond = TimeLabelEmbedding(
            cond_dim,
            time_embedding=time_embedding,
            embed_dim=channels,
            time_scale=time_scale,
            num_classes=num_classes,
            dtype=dtype,
            rngs=rngs,
        )
        self.conv_in = nnx.Conv(self.in_channels, channels, (3, 3), dtype=dtype, rngs=rngs)
        ch, skip_chs = channels, [channels]
        down, downsample = [], []
        for i, m in enumerate(mults):
            for _ in range(self.num_res_blocks):
                down.append(Block(ch, channels * m, cond_dim, attention=i in attn, **kw))
                ch = channels * m
                skip_chs.append(ch)
            if i < num_levels - 1:
                downsample.append(nnx.Conv(ch, ch, (3, 3), strides=(2, 2), dtype=dtype, rngs=rngs))
                skip_chs.append(ch)
        self.down, self.downsample = nnx.List(down), nnx.List(downsample)
        self.mid1 = Block(ch, ch, cond_dim, attention=True, **kw)
        self.mid2 = Block(ch, ch, cond_dim, attention=False, **kw)
        up, upsample = [], []
        for i in reversed(range(num_levels)):
            for _ in range(self.num_res_blocks + 1):
                out = channels * mults[i]
                up.append(Block(ch + skip_chs.pop(), out, cond_dim, attention=i in attn, **kw))
                ch = out
            if i > 0:
                upsample.append(nnx.Conv(ch, ch, (3, 3), dtype=dtype, rngs=rngs))
        self.up, self.upsample = nnx.List(up), nnx.List(upsample)
        self.norm_out = nnx.GroupNorm(ch, num_groups, dtype=dtype, rngs=rngs)
        self.conv_out = nnx.Conv(ch, self.in_channels, (3, 3), dtype=dtype, rngs=rngs)

    def __call__(
        self, x: ArrayLike, t: ArrayLike, y: ArrayLike | None = None, *, key: Array | None = None
    ) -> Array:
        x = jnp.asarray(x)
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(
                f"`x` must have shape [B, H, W, {self.in_channels}] (NHWC), got {x.shape}."
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            x = x.astype(jnp.result_type(float))
        c = self.cond(t, x.shape[0], y)
        num_blocks = len(self.down) + 2 + len(self.up)
        keys = iter([None] * num_blocks if key is None else jax.random.split(key, num_blocks))

        hs = [self.conv_in(x)]
        h, idx = hs[0], 0
        for i in range(self.num_levels):
            for _ in range(self.num_res_blocks):
                h = self.down[idx](h, c, next(keys))
                hs.append(h)
                idx += 1
            if i < self.num_levels - 1:
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid2(self.mid1(h, c, next(keys)), c, next(keys))
        idx = 0
        for j, i in enumerate(reversed(range(self.num_levels))):
            for _ in range(self.num_res_blocks + 1):
                h = self.up[idx](jnp.concatenate([h, hs.pop()], axis=-1), c, next(keys))
                idx += 1
            if i > 0:
                skip = hs[-1]
                h = jax.image.resize(h, (*skip.shape[:3], h.shape[-1]), method="nearest")
                h = self.upsample[j](h)
        return self.conv_out(jax.nn.silu(self.norm_out(h))).astype(x.dtype)
