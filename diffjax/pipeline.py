"""Input pipeline for data larger than memory: `.npy` shards read through Grain.

`write_shards` stores named arrays sharing a leading example axis (images `x`, labels `y`, ...)
as shards of `shard_size` examples, one `.npy` file per field and shard, with an `index.json`;
`make_loader` streams shuffled batches from them. Shards are opened memory-mapped
(`np.load(mmap_mode="r")`), so only the examples of the current batch are read from disk:

    pipeline.write_shards({"x": images, "y": labels}, "data/shards", shard_size=10_000)
    loader = pipeline.make_loader("data/shards", batch_size=128, seed=0)
    batch = next(loader)  # {"x": [128, H, W, C], "y": [128]}, NumPy
    heldout = pipeline.read_examples("data/shards", 0, 1000)  # a contiguous range, in memory

Multi-host: each process reads its own contiguous, disjoint part of the examples (by default
part `jax.process_index()` of `jax.process_count()`), shuffled per epoch, and passes its local
batches to `training.shard_batch`. Grain (`pip install diffjax[data]`) is imported only when a
loader is made.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np

from diffjax import data
from diffjax._checks import check_int, check_positive_int

__all__ = ["make_loader", "read_examples", "write_shards"]

INDEX_FILE = "index.json"
READ_AHEAD = 8
"""Batches a loader prepares ahead of the one it returns (in each worker process)."""
READ_THREADS = 4
"""Threads reading those batches (in each worker process)."""
_FORMAT = "diffjax-shards"


def write_shards(arrays: Mapping[str, Any], directory, *, shard_size: int, order=None) -> str:
    """Write `arrays` (name -> array `[N, ...]`, one leading axis `N`) as `.npy` shards.

    Shard `s` holds examples `s * shard_size` to `(s + 1) * shard_size - 1` (the last one the
    rest) of `arrays`, or of `arrays[order]`, as `<name>-<s:05d>.npy` for each name;
    `index.json` records the shapes, dtypes and shard sizes. Arrays are read one shard at a
    time, so memory-mapped inputs larger than memory work. The write is atomic: everything
    goes into a temporary sibling directory that is renamed to `directory` when complete.

    Args:
        arrays: a mapping from field names (Python identifiers) to NumPy-convertible arrays.
        directory: where to write; it must not exist, or be empty.
        shard_size: examples per shard.
        order: a permutation of `0..N-1` (e.g. `np.random.default_rng(0).permutation(N)`):
            written example `i` is input example `order[i]`. Shuffling when writing makes
            every contiguous range (each process's part, a held-out head) a uniform sample.

    Returns:
        The absolute path of `directory`.

    Raises:
        TypeError / ValueError naming the argument: no arrays, a bad name, a scalar, leading
            sizes that differ or are 0, float rows holding NaN or inf (their count and first
            indices), `order` not a permutation, a non-empty `directory`, `shard_size < 1`.
    """
    if not isinstance(arrays, Mapping) or not arrays:
        raise TypeError(
            f"`arrays` must be a non-empty mapping of names to arrays, got {type(arrays).__name__}."
        )
    fields = {}
    for name, value in arrays.items():
        if not (isinstance(name, str) and name.isidentifier()):
            raise ValueError(f"`arrays` keys must be Python identifiers, got {name!r}.")
        value = np.asarray(value)
        if value.ndim < 1 or value.dtype == object:
            raise ValueError(
                f"`arrays[{name!r}]` must be an array with a leading example axis, got "
                f"shape {value.shape} and dtype {value.dtype}."
            )
        fields[name] = value
    sizes = {name: a.shape[0] for name, a in fields.items()}
    num = next(iter(sizes.values()))
    if num == 0 or any(n != num for n in sizes.values()):
        raise ValueError(f"`arrays` must share a non-zero leading size, got {sizes}.")
    shard_size = check_positive_int(shard_size, "shard_size")
    if order is not None:
        order = np.asarray(order)
        if order.shape != (num,) or not np.issubdtype(order.dtype, np.integer):
            raise ValueError(
                f"`order` must be an integer permutation of shape [{num}], got dtype "
                f"{order.dtype} and shape {order.shape}."
            )
        if not np.array_equal(np.sort(order), np.arange(num)):
            raise ValueError(f"`order` must be a permutation of 0..{num - 1}.")
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and (not os.path.isdir(directory) or os.listdir(directory)):
        raise ValueError(f"`directory` {directory!r} already exists and is not an empty directory.")
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + ".tmp-", dir=parent)
    try:
        shards, bad = [], {name: (0, []) for name in fields}
        for s, start in enumerate(range(0, num, shard_size)):
            rows = np.arange(start, min(start + shard_size, num))
            if order is not None:
                rows = order[rows]
                ascending = np.sort(rows)  # read in ascending order (sequential on disk)
                back = np.searchsorted(ascending, rows)
            files = {}
            for name, a in fields.items():
                part = a[start : start + shard_size] if order is None else a[ascending][back]
                count, first = bad[name]
                nonfinite = rows[data._nonfinite_rows(part)]  # input indices
                bad[name] = (count + nonfinite.size, first + nonfinite[:5].tolist())
                files[name] = f"{name}-{s:05d}.npy"
                np.save(os.path.join(tmp, files[name]), part)
            shards.append({"size": min(shard_size, num - start), "files": files})
        for name, (count, first) in bad.items():
            if count:
                raise data._nonfinite_error(f"`arrays[{name!r}]`", count, first[:5], num)
        index = {
            "format": _FORMAT,
            "version": 1,
            "num_examples": num,
            "fields": {n: {"shape": a.shape[1:], "dtype": a.dtype.str} for n, a in fields.items()},
            "shards": shards,
        }
        with open(os.path.join(tmp, INDEX_FILE), "w") as f:
            json.dump(index, f, indent=1)
        if os.path.isdir(directory):
            os.rmdir(directory)
        os.rename(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _read_index(directory: str) -> dict:
    path = os.path.join(directory, INDEX_FILE)
    if not os.path.isfile(path):
        what = "does not exist" if not os.path.isdir(directory) else f"has no {INDEX_FILE}"
        raise ValueError(f"`directory` {directory!r} {what}: write it with write_shards.")
    try:
        with open(path) as f:
            index = json.load(f)
        sizes = sum(s["size"] for s in index["shards"])
        ok = index.get("format") == _FORMAT and sizes == index["num_examples"]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a readable shard index: {err}") from None
    if not ok:
        raise ValueError(f"{path} is not a diffjax shard index (written by write_shards).")
    return index


class _ShardSource:
    """Grain random-access source over memory-mapped shards: example `i` as a dict of arrays.

    Holds file names only when pickled (for Grain's worker processes), and opens the shards
    lazily in each process.
    """

    def __init__(self, directory: str, index: dict):
        self._directory = directory
        self._index = index
        self._ends = np.cumsum([s["size"] for s in index["shards"]])
        self._shards = None

    def __len__(self) -> int:
        return int(self._index["num_examples"])

    def open(self) -> list[dict[str, np.ndarray]]:
        """The shards as memory maps (opened and checked against the index once)."""
        if self._shards is not None:
            return self._shards
        shards = []
        for shard in self._index["shards"]:
            opened = {}
            for name, spec in self._index["fields"].items():
                path = os.path.join(self._directory, shard["files"][name])
                try:
                    a = np.load(path, mmap_mode="r")
                except (OSError, ValueError) as err:
                    raise ValueError(f"shard file {path} is missing or unreadable: {err}") from None
                want = (shard["size"], *spec["shape"])
                if a.shape != want or a.dtype.str != spec["dtype"]:
                    raise ValueError(
                        f"shard file {path} holds {a.dtype.str} {a.shape}, the index says "
                        f"{spec['dtype']} {want}."
                    )
                opened[name] = a
            shards.append(opened)
        self._shards = shards
        return shards

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        s = int(np.searchsorted(self._ends, i, side="right"))
        local = i - (int(self._ends[s - 1]) if s else 0)
        return {name: np.asarray(a[local]) for name, a in self.open()[s].items()}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_shards": None}


def read_examples(directory, start: int, stop: int, *, fields=None) -> dict[str, np.ndarray]:
    """Examples `start..stop-1` of the shards in `directory`, read into memory (NumPy).

    Args:
        directory: written by `write_shards`.
        start, stop: the range, `0 <= start < stop <= N`.
        fields: the names to read (default: every field).

    Returns:
        `{name: [stop - start, ...]}`.

    Raises:
        ValueError naming the argument: a missing or foreign `directory`, missing or
            mismatched shard files, a range outside `0..N`, an unknown field.
    """
    directory = os.path.abspath(os.fspath(directory))
    start, stop = check_int(start, "start"), check_int(stop, "stop")
    index = _read_index(directory)
    num = index["num_examples"]
    if not start < stop <= num:
        raise ValueError(
            f"`start` and `stop` must satisfy 0 <= start < stop <= {num} for {directory!r}, "
            f"got {start} and {stop}."
        )
    names = list(index["fields"]) if fields is None else list(fields)
    unknown = sorted(set(names) - set(index["fields"]))
    if unknown or not names:
        raise ValueError(f"`fields` must name some of {sorted(index['fields'])}, got {names}.")
    source = _ShardSource(directory, index)
    parts, begin = {name: [] for name in names}, 0
    for shard in source.open():
        end = begin + len(next(iter(shard.values())))
        lo, hi = max(start, begin), min(stop, end)
        if lo < hi:
            for name in names:
                parts[name].append(np.asarray(shard[name][lo - begin : hi - begin]))
        begin = end
    return {name: np.concatenate(p) for name, p in parts.items()}


def make_loader(
    directory,
    *,
    batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
    skip_examples: int = 0,
    start_batch: int = 0,
    worker_count: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
    """Shuffled batches `{name: [batch_size, ...]}` (NumPy) from the shards in `directory`.

    The `N - skip_examples` examples after the first `skip_examples` are cut into
    `shard_count` contiguous parts of `(N - skip_examples) // shard_count` (the remainder at
    the end is left out, so every process runs the same number of steps); this process reads
    part `shard_index`. Each epoch visits its part in a new order (a Grain `MapDataset`
    shuffle, reseeded per epoch, a pure function of `seed`) and drops the last
    `part % batch_size` examples of that order. The stream is random-access: `start_batch=k`
    begins exactly where an uninterrupted stream is after `k` batches.

    Args:
        directory: written by `write_shards`.
        batch_size: examples per batch of this process (the global batch is
            `batch_size * shard_count`).
        seed: the shuffle seed (use the same in every process).
        shard_index, shard_count: this process's part; default `jax.process_index()` of
            `jax.process_count()` (give both or neither).
        num_epochs: stop after this many epochs (`None`: never).
        skip_examples: leave out the first examples (e.g. kept as a held-out set, read with
            `read_examples(directory, 0, skip_examples)`).
        start_batch: begin at this batch of the stream (resuming at a training step).
        worker_count: Grain worker processes reading ahead (0: read in this process).

    Returns:
        A Grain `DatasetIterator` (its `get_state()` / `set_state()` resume the stream).

    Raises:
        ValueError naming the argument: a missing or foreign `directory`, missing or
            mismatched shard files, `batch_size < 1` or larger than the part, a
            `shard_index` outside `0..shard_count - 1`, `skip_examples` or `start_batch`
            negative, or `skip_examples` leaving no example.
    """
    directory = os.path.abspath(os.fspath(directory))
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = check_int(seed, "seed")
    worker_count = check_int(worker_count, "worker_count")
    skip_examples = check_int(skip_examples, "skip_examples")
    start_batch = check_int(start_batch, "start_batch")
    if num_epochs is not None:
        num_epochs = check_positive_int(num_epochs, "num_epochs")
    if (shard_index is None) != (shard_count is None):
        raise ValueError("`shard_index` and `shard_count` must be given together (or neither).")
    if shard_count is None:
        shard_index, shard_count = jax.process_index(), jax.process_count()
    shard_count = check_positive_int(shard_count, "shard_count")
    shard_index = check_int(shard_index, "shard_index")
    if shard_index >= shard_count:
        raise ValueError(
            f"`shard_index` must lie in 0..{shard_count - 1} for shard_count={shard_count}, "
            f"got {shard_index}."
        )
    index = _read_index(directory)
    if not 0 <= skip_examples < index["num_examples"]:
        raise ValueError(
            f"`skip_examples` must lie in 0..{index['num_examples'] - 1} for the "
            f"{index['num_examples']} examples of {directory!r}, got {skip_examples}."
        )
    part = (index["num_examples"] - skip_examples) // shard_count
    if batch_size > part:
        raise ValueError(
            f"`batch_size` {batch_size} exceeds the {part} examples of each of the "
            f"{shard_count} parts of {directory!r}."
        )
    source = _ShardSource(directory, index)
    source.open()  # check every shard file now, not at the first batch
    import grain

    first = skip_examples + shard_index * part
    ds = grain.MapDataset.source(source)[first : first + part]
    ds = ds.shuffle(seed=seed).batch(batch_size, drop_remainder=True).repeat(num_epochs)
    ds = ds[start_batch:]
    # Grain's default reads 500 elements (here batches) ahead: too many batches of images.
    read = grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=READ_AHEAD)
    ds = ds.to_iter_dataset(read)
    if worker_count == 0:
        return iter(ds)
    from absl import flags

    # Grain 0.2.18 reads an Abseil flag in its worker setup and fails when the flags were
    # never parsed (a script not run by absl.app); google/grain#1355, fixed after 0.2.18.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    options = grain.MultiprocessingOptions(num_workers=worker_count)
    return iter(ds.mp_prefetch(options))
