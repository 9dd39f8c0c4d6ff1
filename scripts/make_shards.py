"""Convert an `.npz` of images (and labels) into `.npy` shards for `diffjax.pipeline`.

    python scripts/make_shards.py --npz mnist.npz --out data/mnist_shards --shard_size 10000
    python scripts/make_shards.py --help

The images are read as `--dataset npz:<path>` reads them (`diffjax.data.load_npz`: the first
of `x_train`, `images`, `x`, ... unless `--x_key`; uint8 pixels mapped to `[-1, 1]`, float32,
NHWC) and written with `pipeline.write_shards` as the fields `x` and, when present, `y`
(int32 labels), atomically into `--out`, which must not exist or be empty, in a random order
drawn from `--seed` (`--no-shuffle` keeps the archive's order): each process's contiguous
part of the shards, and the held-out head `scripts/train.py --dataset shards:<out>` keeps
aside, are then uniform samples even when the archive is sorted by class. Stream them with
`pipeline.make_loader(out, batch_size=..., seed=...)`.

The conversion streams, for archives larger than memory: it needs memory for about one shard
(plus a constant and 8 bytes per example for the order), whatever the number of examples. The image and label members are copied
out of the archive (decompressed when saved with `numpy.savez_compressed`) into a temporary
directory beside `--out`, read memory-mapped and converted one shard at a time into
memory-mapped float32 images and int32 labels, from which the shards are written. That
directory needs disk space for the input arrays plus the float32 images (about 5 times the
uint8 images) until the shards are written; it is removed in any case.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from configs import UsageError, opt, parse_options, run_main  # noqa: E402

from diffjax import data, pipeline  # noqa: E402

_BLOCK = 1 << 16
"""Bytes read from the archive at a time."""


@dataclass(frozen=True)
class ShardOptions:
    """`scripts/make_shards.py`: an `.npz` into `.npy` shards."""

    npz: str = opt("", "the input .npz file")
    out: str = opt("", "the output directory (must not exist, or be empty)")
    shard_size: int = opt(10_000, "examples per shard")
    x_key: str = opt("", "the array of images ('': the first of x_train, images, x, ...)")
    y_key: str = opt("", "the array of labels ('': the first of y_train, labels, y, ...)")
    shuffle: bool = opt(True, "write the examples in a random order drawn from --seed")
    seed: int = opt(0, "the seed of that order")


def main(argv=None) -> int:
    return run_main(_main, argv)


def _main(argv) -> int:
    opts = parse_options(argv, ShardOptions, "make_shards.py", "Convert an .npz into shards.")
    if not opts.npz or not opts.out:
        raise UsageError("--npz and --out are required.")
    if opts.shard_size < 1:
        raise UsageError(f"--shard_size must be >= 1, got {opts.shard_size}.")
    out = os.path.abspath(opts.out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise UsageError(f"--out {out!r} already exists and is not an empty directory.")
    try:
        seed = opts.seed if opts.shuffle else None
        shape, labelled = convert(opts.npz, out, opts.shard_size, opts.x_key, opts.y_key, seed)
    except (OSError, TypeError, ValueError) as err:
        raise UsageError(str(err).splitlines()[0]) from err
    shards = -(-shape[0] // opts.shard_size)
    labels = "labels" if labelled else "no labels"
    order = f"shuffled with seed {opts.seed}" if opts.shuffle else "in the archive's order"
    print(f"{shape[0]} examples {shape[1:]} with {labels} in {shards} shards ({order}): {out}")
    return 0


def convert(
    npz: str, out: str, shard_size: int, x_key: str = "", y_key: str = "", seed: int | None = 0
):
    """Write the images (and labels) of `npz`, as `data.load_npz` returns them, as shards
    of `shard_size` into `out`, one shard in memory at a time, in the order
    `np.random.default_rng(seed).permutation(N)` (`seed=None`: the archive's order);
    `(x shape, has labels)`."""
    data._check_npz_path(npz)
    where = repr(os.fspath(npz))
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".convert-", dir=parent)
    try:
        with data._open_npz(npz) as f:
            x_key, y_key = data._npz_keys(f, where, x_key or None, y_key or None)
            x = _extract(f, x_key, os.path.join(tmp, "x-in.npy"), where)
            y = None if y_key is None else _extract(f, y_key, os.path.join(tmp, "y-in.npy"), where)
        x = x.reshape(data._image_shape(x.shape, x_key, where))
        arrays = {}
        if y is not None:
            y = data._check_labels(y, x.shape[0], y_key)
            arrays["y"] = _open(os.path.join(tmp, "y.npy"), np.int32, y.shape)
            for start in range(0, y.shape[0], shard_size):
                arrays["y"][start : start + shard_size] = y[start : start + shard_size]
        arrays = {"x": _open(os.path.join(tmp, "x.npy"), np.float32, x.shape), **arrays}
        data._convert_images(x, arrays["x"], f"`x_key` {x_key!r} of {where}", chunk=shard_size)
        for a in arrays.values():
            a.flush()
        order = None if seed is None else np.random.default_rng(seed).permutation(x.shape[0])
        pipeline.write_shards(arrays, out, shard_size=shard_size, order=order)
        return x.shape, y is not None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _open(path: str, dtype, shape) -> np.memmap:
    """A new `.npy` file at `path`, memory-mapped for writing."""
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def _extract(f, key: str, path: str, where: str) -> np.memmap:
    """The member `key` of the open `.npz` `f` copied (decompressed) block by block to the
    `.npy` file `path`, memory-mapped read-only; `ValueError` naming `where` when it is
    damaged (errors writing `path` stay `OSError`)."""
    member = key if key in f.zip.namelist() else key + ".npy"  # as `NpzFile[key]` finds it
    try:
        src = f.zip.open(member)
    except data._READ_ERRORS as err:
        raise data._damaged(where, err) from err
    with src, open(path, "wb") as dst:
        while True:
            try:
                block = src.read(_BLOCK)
            except data._READ_ERRORS as err:
                raise data._damaged(where, err) from err
            if not block:
                break
            dst.write(block)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except data._READ_ERRORS as err:
        raise data._damaged(where, err) from err


if __name__ == "__main__":
    sys.exit(main())
