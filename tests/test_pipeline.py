"""The shard pipeline: `write_shards` round trip, per-process parts that cover every example
exactly once per epoch, seeded per-epoch shuffles, the conversion script, the argument checks."""

from __future__ import annotations

import json
import os
import re
import sys
import tracemalloc

import numpy as np
import pytest

from diffjax import data, pipeline

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)

import make_shards  # noqa: E402

N = 60


def _examples() -> dict[str, np.ndarray]:
    """Example `i`: label `i`, data row `[3i, 3i + 1, 3i + 2]`, so each row names its index."""
    return {
        "x": np.arange(3 * N, dtype=np.float32).reshape(N, 3),
        "y": np.arange(N, dtype=np.int32),
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """60 examples in shards of 16 (the last holds 12)."""
    return pipeline.write_shards(_examples(), tmp_path_factory.mktemp("p") / "s", shard_size=16)


def _labels(loader) -> list[np.ndarray]:
    """The labels of every batch, after checking each batch's rows against the written data."""
    out = []
    for batch in loader:
        assert batch["x"].dtype == np.float32 and batch["y"].dtype == np.int32
        np.testing.assert_array_equal(batch["x"], _examples()["x"][batch["y"]])
        out.append(batch["y"])
    return out


def test_write_shards_layout(shards):
    """Four shards of 16, 16, 16, 12 rows per field, the index recording them, no temporary
    directory left beside the output; the rows read back equal the input in order."""
    names = sorted(os.listdir(shards))
    assert names == ["index.json"] + [f"{f}-{s:05d}.npy" for f in "xy" for s in range(4)]
    assert os.listdir(os.path.dirname(shards)) == ["s"]
    with open(os.path.join(shards, "index.json")) as f:
        index = json.load(f)
    assert index["num_examples"] == N and [s["size"] for s in index["shards"]] == [16, 16, 16, 12]
    for field, want in _examples().items():
        files = [os.path.join(shards, f"{field}-{s:05d}.npy") for s in range(4)]
        got = np.concatenate([np.load(f) for f in files])
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


def test_parts_cover_every_example_once_per_epoch(shards):
    """3 processes, batches of 5, two epochs: process k reads the contiguous part
    `20k..20k+19`, each epoch visits it once in a new order, and the stream stops after the
    2 epochs; the parts are disjoint and cover all 60 examples."""
    seen = []
    for k in range(3):
        loader = pipeline.make_loader(
            shards, batch_size=5, seed=0, shard_index=k, shard_count=3, num_epochs=2
        )
        batches = _labels(loader)
        assert len(batches) == 8 and all(b.shape == (5,) for b in batches)
        first, second = np.concatenate(batches[:4]), np.concatenate(batches[4:])
        part = np.arange(20 * k, 20 * k + 20)
        np.testing.assert_array_equal(np.sort(first), part)
        np.testing.assert_array_equal(np.sort(second), part)
        assert not np.array_equal(first, second) and not np.array_equal(first, part)
        seen.append(first)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.arange(N))


def test_order_is_a_function_of_the_seed(shards):
    def epoch(seed, **kw):
        loader = pipeline.make_loader(shards, batch_size=6, seed=seed, num_epochs=1, **kw)
        return np.concatenate(_labels(loader))

    a = epoch(1)
    np.testing.assert_array_equal(a, epoch(1))
    np.testing.assert_array_equal(np.sort(a), np.arange(N))  # default: process 0 of 1
    assert not np.array_equal(a, epoch(2))
    np.testing.assert_array_equal(a, epoch(1, shard_index=0, shard_count=1))


def test_uneven_parts_are_equal_and_disjoint(shards):
    """60 examples over 7 processes: parts of 8 (so the last 4 examples are left out), and
    batches of 3 drop 2 examples of each epoch's order; the infinite stream resumes from
    `get_state`."""
    for k in range(7):
        loader = pipeline.make_loader(
            shards, batch_size=3, seed=0, shard_index=k, shard_count=7, num_epochs=2
        )
        batches = _labels(loader)
        assert len(batches) == 4
        assert all(len(set(np.concatenate(batches[e : e + 2]))) == 6 for e in (0, 2))
        assert set(np.concatenate(batches)) <= set(range(8 * k, 8 * k + 8))
    loader = pipeline.make_loader(shards, batch_size=3, seed=0, shard_index=6, shard_count=7)
    np.testing.assert_array_equal(np.concatenate([next(loader)["y"] for _ in range(4)]),
                                  np.concatenate(batches))  # fmt: skip
    state = loader.get_state()
    following = next(loader)["y"]
    loader.set_state(state)
    np.testing.assert_array_equal(next(loader)["y"], following)


def test_order_held_out_head_and_resume(tmp_path):
    """Written in a permuted order, read back by `read_examples` across shard boundaries;
    `skip_examples=10` keeps the head aside (two processes split the other 50 into parts of
    25), and `start_batch=k` continues the stream exactly where it is after k batches, across
    an epoch boundary."""
    order = np.random.default_rng(3).permutation(N)
    shards = pipeline.write_shards(_examples(), tmp_path / "s", shard_size=16, order=order)
    head = pipeline.read_examples(shards, 0, 10)
    np.testing.assert_array_equal(head["y"], order[:10])
    np.testing.assert_array_equal(head["x"], _examples()["x"][order[:10]])
    middle = pipeline.read_examples(shards, 14, 35, fields=["y"])
    assert list(middle) == ["y"] and list(middle["y"]) == list(order[14:35])
    parts = []
    for k in range(2):
        loader = pipeline.make_loader(shards, batch_size=5, seed=0, shard_index=k, shard_count=2,
                                      skip_examples=10, num_epochs=1)  # fmt: skip
        parts.append(np.concatenate(_labels(loader)))
    np.testing.assert_array_equal(np.sort(parts[0]), np.sort(order[10:35]))
    np.testing.assert_array_equal(np.sort(parts[1]), np.sort(order[35:]))
    loader = pipeline.make_loader(shards, batch_size=5, seed=4, skip_examples=10)
    stream = [next(loader)["y"] for _ in range(25)]  # 10 batches an epoch
    resumed = pipeline.make_loader(shards, batch_size=5, seed=4, skip_examples=10, start_batch=7)
    for want in stream[7:]:
        np.testing.assert_array_equal(next(resumed)["y"], want)


def test_write_shards_refuses_nonfinite_rows_and_bad_orders(tmp_path):
    """NaN / inf rows are named by their input index (also when permuted) and nothing is
    written; an `order` that is not a permutation of 0..N-1 is refused."""
    x = _examples()["x"].copy()
    x[[7, 41]] = np.nan
    x[50, 1] = np.inf
    order = np.random.default_rng(0).permutation(N)
    for kw in ({}, {"order": order}):
        with pytest.raises(ValueError, match=r"`arrays\['x'\]`: 3 of 60 rows hold NaN or inf"):
            pipeline.write_shards({"x": x}, tmp_path / "n", shard_size=16, **kw)
    with pytest.raises(ValueError, match=r"\(rows 7, 41, 50\)"):
        pipeline.write_shards({"x": x}, tmp_path / "n", shard_size=16)
    for bad in (order[:-1], order.astype(float), np.zeros(N, int)):
        with pytest.raises(ValueError, match="`order`"):
            pipeline.write_shards(_examples(), tmp_path / "o", shard_size=16, order=bad)
    assert os.listdir(tmp_path) == []


def test_bad_inputs_name_the_argument(shards, tmp_path):
    def loader(directory=shards, **kw):
        return pipeline.make_loader(directory, **{"batch_size": 4, "seed": 0, **kw})

    with pytest.raises(ValueError, match="`directory` .* does not exist"):
        loader(tmp_path / "missing")
    with pytest.raises(ValueError, match="`directory` .* has no index.json"):
        loader(tmp_path)
    for kw, name in (
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 21, "shard_index": 0, "shard_count": 3}, "batch_size"),
        ({"shard_index": 3, "shard_count": 3}, "shard_index"),
        ({"shard_index": -1, "shard_count": 3}, "shard_index"),
        ({"shard_index": 1}, "shard_index"),
        ({"shard_index": 0, "shard_count": 0}, "shard_count"),
        ({"num_epochs": 0}, "num_epochs"),
        ({"worker_count": -1}, "worker_count"),
        ({"skip_examples": -1}, "skip_examples"),
        ({"skip_examples": 60}, "skip_examples"),
        ({"skip_examples": 50, "batch_size": 11}, "batch_size"),
        ({"start_batch": -1}, "start_batch"),
    ):
        with pytest.raises(ValueError, match=f"`{name}`"):
            loader(**kw)
    with pytest.raises(TypeError, match="seed"):
        loader(seed=0.5)
    with pytest.raises(ValueError, match="`directory` .* already exists"):
        pipeline.write_shards(_examples(), shards, shard_size=8)
    mismatched = {"x": np.zeros((3, 2)), "y": np.zeros(4)}
    with pytest.raises(ValueError, match="`arrays` must share"):
        pipeline.write_shards(mismatched, tmp_path / "a", shard_size=2)
    with pytest.raises(ValueError, match="`shard_size`"):
        pipeline.write_shards(_examples(), tmp_path / "b", shard_size=0)
    with pytest.raises(TypeError, match="arrays"):
        pipeline.write_shards(np.zeros((3, 2)), tmp_path / "c", shard_size=2)
    assert sorted(os.listdir(tmp_path)) == []  # nothing written by the refused calls
    broken = pipeline.write_shards({"x": np.zeros((4, 2))}, tmp_path / "d", shard_size=2)
    os.remove(os.path.join(broken, "x-00001.npy"))
    with pytest.raises(ValueError, match="x-00001.npy is missing"):
        loader(broken, batch_size=2)
    for kw, name in (({"start": 5, "stop": 5}, "start"), ({"start": 0, "stop": 61}, "stop"),
                     ({"start": 0, "stop": 2, "fields": ["z"]}, "fields"),
                     ({"start": 0, "stop": 2, "fields": []}, "fields")):  # fmt: skip
        with pytest.raises(ValueError, match=f"`{name}`"):
            pipeline.read_examples(shards, **kw)
    with pytest.raises(TypeError, match="start"):
        pipeline.read_examples(shards, 0.0, 2)


def test_make_shards_script(tmp_path, capsys):
    """An `.npz` of uint8 images and labels into shards of 4: the loader returns the images
    of `data.load_npz` (mapped to [-1, 1]) with their labels; bad input is one stderr line."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 3, 10)
    np.savez(tmp_path / "d.npz", x_train=images, y_train=labels)
    out = str(tmp_path / "shards")
    argv = ["--npz", str(tmp_path / "d.npz"), "--out", out, "--shard_size", "4"]
    assert make_shards.main(argv) == 0
    assert "10 examples (4, 4, 1) with labels in 3 shards" in capsys.readouterr().out
    x, y = data.load_npz(tmp_path / "d.npz")
    loader = pipeline.make_loader(out, batch_size=10, seed=0, num_epochs=1)
    (batch,) = list(loader)

    def rows(x, y):  # (image, label) rows in lexicographic order: the order-free content
        a = np.concatenate([np.reshape(x, (10, -1)), np.reshape(y, (10, 1))], axis=1)
        return a[np.lexsort(a.T[::-1])]

    np.testing.assert_array_equal(rows(batch["x"], batch["y"]), rows(x, y))
    assert batch["x"].dtype == np.float32 and batch["x"].shape == (10, 4, 4, 1)
    for bad, message in (
        (argv, "already exists"),
        (["--npz", str(tmp_path / "no.npz"), "--out", str(tmp_path / "o")], "does not exist"),
        (["--out", str(tmp_path / "o")], "--npz and --out are required"),
        ([*argv[:4], "--shard_size", "0"], "--shard_size must be >= 1"),
    ):
        assert make_shards.main(bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err
    with pytest.raises(SystemExit) as exit_info:
        make_shards.main(["--help"])
    assert exit_info.value.code == 0 and "--shard_size" in capsys.readouterr().out


def _read_shards(directory) -> dict[str, np.ndarray]:
    """Every field of the shards in `directory`, concatenated in order."""
    with open(os.path.join(directory, "index.json")) as f:
        index = json.load(f)
    return {
        name: np.concatenate(
            [np.load(os.path.join(directory, s["files"][name])) for s in index["shards"]]
        )
        for name in index["fields"]
    }


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_make_shards_equals_load_npz(tmp_path, capsys, save):
    """Stored and deflated archives, 103 examples in shards of 10 (the last holds 3): with
    `--no-shuffle` the shards hold exactly the arrays of `data.load_npz` (float32 images,
    int32 labels given as int64 [N, 1]); by default the same (image, label) pairs in an order
    that is a function of `--seed` and not the archive's; the temporary directory beside
    `--out` is gone."""
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (103, 5, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (103, 1))
    images[:, 0, 0, 0] = labels[:, 0]  # each image carries its label in its first pixel
    save(tmp_path / "d.npz", images=images, labels=labels)
    argv = ["--npz", str(tmp_path / "d.npz"), "--shard_size", "10"]
    assert make_shards.main([*argv, "--out", str(tmp_path / "s"), "--no-shuffle"]) == 0
    assert "103 examples (5, 4, 3) with labels in 11 shards" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["d.npz", "s"]
    got = _read_shards(tmp_path / "s")
    x, y = map(np.asarray, data.load_npz(tmp_path / "d.npz"))
    assert got["x"].dtype == np.float32 and got["y"].dtype == np.int32
    np.testing.assert_array_equal(got["x"], x)
    np.testing.assert_array_equal(got["y"], y)
    rows = []
    for k, seed in enumerate((0, 0, 1)):
        assert make_shards.main([*argv, "--out", str(tmp_path / f"r{k}"), "--seed", str(seed)]) == 0
        shuffled = _read_shards(tmp_path / f"r{k}")
        np.testing.assert_array_equal(shuffled["x"][:, 0, 0, 0] * 127.5 + 127.5, shuffled["y"])
        rows.append(shuffled["x"].reshape(103, -1))
        assert sorted(map(bytes, rows[-1])) == sorted(map(bytes, x.reshape(103, -1)))
    assert np.array_equal(rows[0], rows[1]) and not np.array_equal(rows[0], rows[2])
    assert not np.array_equal(rows[0], x.reshape(103, -1))
    assert sorted(os.listdir(tmp_path)) == ["d.npz", "r0", "r1", "r2", "s"]


def test_make_shards_streams(tmp_path):
    """16000 uint8 images 8x8x1 (float32: 4 MiB) in shards of 100, deflated: the peak of
    the memory allocated while converting (tracemalloc tracks NumPy's buffers) stays under
    1/4 of the float32 images (about 0.3 MiB, mostly zlib and the 64 KiB read blocks), so
    neither they nor the uint8 images are ever held whole."""
    images = np.random.default_rng(2).integers(0, 256, (16000, 8, 8), dtype=np.uint8)
    np.savez_compressed(tmp_path / "d.npz", x=images, y=np.arange(16000))
    full = images.size * 4
    argv = ["--npz", str(tmp_path / "d.npz"), "--out", str(tmp_path / "s"), "--shard_size", "100"]
    tracemalloc.start()
    try:
        assert make_shards.main(argv) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < full / 4, (peak, full)
    got = _read_shards(tmp_path / "s")
    assert sorted(got["y"]) == list(range(16000))  # shuffled; each label is its index
    np.testing.assert_array_equal(got["x"][..., 0], images[got["y"]] / np.float32(127.5) - 1)


def test_make_shards_bad_input_leaves_nothing(tmp_path, capsys):
    """Float images with NaN rows, labels of the wrong length, a damaged deflate stream: one
    stderr line naming the key (the NaN rows counted over every shard) or the file, nothing
    left beside `--out`."""
    x = np.zeros((30, 4, 4), np.float32)
    x[[4, 17, 25]] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    np.savez(tmp_path / "len.npz", x=np.zeros((30, 4, 4), np.uint8), y=np.zeros(29, np.int64))
    np.savez_compressed(tmp_path / "z.npz", x=np.arange(4096, dtype=np.uint8).reshape(64, 8, 8))
    raw = bytearray((tmp_path / "z.npz").read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # inside the deflate stream of x
    (tmp_path / "flip.npz").write_bytes(bytes(raw))
    for name, message in (
        ("flip.npz", r"flip.npz' is damaged"),
        ("nan.npz", r"`x_key` 'x' of .*nan.npz': 3 of 30 rows hold NaN or inf \(rows 4, 17, 25\)"),
        ("len.npz", r"`y_key` 'y' must hold integer labels of shape \[N\] = \[30\]"),
    ):
        argv = ["--npz", str(tmp_path / name), "--out", str(tmp_path / "out" / "s"),
                "--shard_size", "8"]  # fmt: skip
        assert make_shards.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(message, err[0]), err
        assert os.listdir(tmp_path / "out") == []
