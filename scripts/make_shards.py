"""Convert an `.npz` of images (and labels) into `.npy` shards for `diffjax.pipeline`.

    python scripts/make_shards.py --npz mnist.npz --out data/mnist_shards --shard_size 10000
    python scripts/make_shards.py --help

The images are read as `--dataset npz:<path>` reads them (`diffjax.data.load_npz`: the first
of `x_train`, `images`, `x`, ... unless `--x_key`; uint8 pixels mapped to `[-1, 1]`, float32,
NHWC) and written with `pipeline.write_shards` as the fields `x` and, when present, `y`
(int32 labels), atomically into `--out`, which must not exist or be empty. Stream them with
`pipeline.make_loader(out, batch_size=..., seed=...)`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from configs import UsageError, opt, parse_options, run_main  # noqa: E402

from diffjax import data, pipeline  # noqa: E402


@dataclass(frozen=True)
class ShardOptions:
    """`scripts/make_shards.py`: an `.npz` into `.npy` shards."""

    npz: str = opt("", "the input .npz file")
    out: str = opt("", "the output directory (must not exist, or be empty)")
    shard_size: int = opt(10_000, "examples per shard")
    x_key: str = opt("", "the array of images ('': the first of x_train, images, x, ...)")
    y_key: str = opt("", "the array of labels ('': the first of y_train, labels, y, ...)")


def main(argv=None) -> int:
    return run_main(_main, argv)


def _main(argv) -> int:
    opts = parse_options(argv, ShardOptions, "make_shards.py", "Convert an .npz into shards.")
    if not opts.npz or not opts.out:
        raise UsageError("--npz and --out are required.")
    if opts.shard_size < 1:
        raise UsageError(f"--shard_size must be >= 1, got {opts.shard_size}.")
    try:
        x, y = data.load_npz(opts.npz, x_key=opts.x_key or None, y_key=opts.y_key or None)
        arrays = {"x": x} if y is None else {"x": x, "y": y}
        out = pipeline.write_shards(arrays, opts.out, shard_size=opts.shard_size)
    except (FileNotFoundError, TypeError, ValueError) as err:
        raise UsageError(str(err).splitlines()[0]) from err
    shards = -(-x.shape[0] // opts.shard_size)
    labels = "no labels" if y is None else "labels"
    print(f"{x.shape[0]} examples {tuple(x.shape[1:])} with {labels} in {shards} shards: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
