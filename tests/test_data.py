"""Tests for diffjax.data: toy sets against their declared parameters, digits, npz, batching."""

from __future__ import annotations

import math
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import data

KEY = jax.random.key(0)
TOY = [data.eight_gaussians, data.two_moons, data.swiss_roll, data.checkerboard]


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


@pytest.mark.parametrize("sampler", TOY)
def test_toy_shapes_determinism_and_scale(sampler):
    x = sampler(KEY, 4000)
    assert x.shape == (4000, 2) and x.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(x)))
    np.testing.assert_array_equal(x, sampler(KEY, 4000))
    np.testing.assert_array_equal(x, sampler(jax.random.PRNGKey(0), 4000))  # legacy keys
    assert not np.allclose(x, sampler(jax.random.key(1), 4000))
    # Centred, average per-coordinate variance 1 (2 for eight_gaussians, r^2/2 + std^2 ~ 2.01).
    se = np.std(np.asarray(x), axis=0) / math.sqrt(4000)
    assert np.all(np.abs(np.mean(np.asarray(x), axis=0)) < 5 * se)
    target = 2.0 + data.EIGHT_GAUSSIANS_STD**2 if sampler is data.eight_gaussians else 1.0
    assert abs(float(jnp.mean(jnp.var(x, axis=0))) - target) < 0.1 * target


def mixture_moments(weights, means, stds):
    """Exact mean and covariance of `sum_k w_k N(means_k, stds_k^2 I)`."""
    w, mu, s = (np.asarray(a, np.float64) for a in (weights, means, stds))
    mean = w @ mu
    second = np.einsum("k,ki,kj->ij", w, mu, mu) + np.sum(w * s**2) * np.eye(mu.shape[1])
    return mean, second - np.outer(mean, mean)


def test_eight_gaussians_matches_declared_mixture():
    weights, means, stds = data.eight_gaussians_params()
    assert weights.shape == (8,) and means.shape == (8, 2) and stds.shape == (8,)
    np.testing.assert_allclose(jnp.sum(weights), 1.0)
    np.testing.assert_allclose(
        jnp.linalg.norm(means, axis=-1), data.EIGHT_GAUSSIANS_RADIUS, rtol=1e-6
    )
    np.testing.assert_allclose(stds, data.EIGHT_GAUSSIANS_STD)
    n = 20_000
    x = np.asarray(data.eight_gaussians(jax.random.key(42), n), np.float64)
    mean, cov = mixture_moments(weights, means, stds)
    # Monte Carlo: every entry within 5 standard errors.
    se_mean = x.std(axis=0) / math.sqrt(n)
    assert np.all(np.abs(x.mean(axis=0) - mean) < 5 * se_mean)
    xc = x - mean[None, :]
    prods = xc[:, :, None] * xc[:, None, :]
    se_cov = prods.std(axis=0) / math.sqrt(n)
    assert np.all(np.abs(prods.mean(axis=0) - cov) < 5 * se_cov)
    # Each component has weight 1/8 and isotropic spread std.
    d2 = np.sum((x[:, None, :] - np.asarray(means, np.float64)[None]) ** 2, axis=-1)
    nearest = np.argmin(d2, axis=1)
    frac = np.bincount(nearest, minlength=8) / n
    assert np.all(np.abs(frac - 1 / 8) < 5 * math.sqrt((1 / 8) * (7 / 8) / n))
    r2 = d2[np.arange(n), nearest]  # ~ std^2 chi^2_2: mean 2 std^2, sd 2 std^2
    s2 = data.EIGHT_GAUSSIANS_STD**2
    assert abs(r2.mean() - 2 * s2) < 5 * 2 * s2 / math.sqrt(n)
    # Custom parameters are honoured.
    x = data.eight_gaussians(KEY, 1000, radius=5.0, std=0.01)
    np.testing.assert_allclose(jnp.linalg.norm(x, axis=-1).mean(), 5.0, rtol=1e-2)


def test_two_class_matches_declared_mixture():
    weights, means, stds, labels = data.two_class_params()
    assert labels.dtype == jnp.int32 and set(np.asarray(labels).tolist()) == {0, 1}
    n = 20_000
    x, y = data.two_class(jax.random.key(7), n)
    assert x.shape == (n, 2) and x.dtype == jnp.float32 and y.shape == (n,) and y.dtype == jnp.int32
    x1, y1 = data.two_class(jax.random.key(7), n)
    np.testing.assert_array_equal(x, x1)
    np.testing.assert_array_equal(y, y1)
    x, y = np.asarray(x, np.float64), np.asarray(y)
    mean, cov = mixture_moments(weights, means, stds)
    se = x.std(axis=0) / math.sqrt(n)
    assert np.all(np.abs(x.mean(axis=0) - mean) < 5 * se)
    assert np.all(np.abs(np.cov(x.T) - cov) < 0.05)
    p1 = float(jnp.sum(jnp.where(labels == 1, weights, 0.0)))
    assert abs(y.mean() - p1) < 5 * math.sqrt(p1 * (1 - p1) / n)
    # The label is that of the generating component: almost always the nearest mean's.
    nearest = np.argmin(np.sum((x[:, None, :] - np.asarray(means)[None]) ** 2, axis=-1), axis=1)
    assert np.mean(np.asarray(labels)[nearest] == y) > 0.99


def test_checkerboard_support_and_parity():
    x = np.asarray(data.checkerboard(KEY, 5000)) * 2 / math.sqrt(3.0)  # back to [-2, 2)^2
    assert np.all((x >= -2.0 - 1e-5) & (x < 2.0 + 1e-5))
    assert np.all((np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2 == 0)


def test_digits():
    x, y = data.digits()
    assert x.shape == (1797, 8, 8, 1) and x.dtype == jnp.float32
    assert y.shape == (1797,) and y.dtype == jnp.int32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert set(np.asarray(y).tolist()) == set(range(10))


def test_digits_missing_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"diffjax\[scripts\]"):
        data.digits()


def test_load_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    labels = np.arange(5, dtype=np.int64)
    path = tmp_path / "mnist.npz"
    np.savez(path, x_train=images, y_train=labels)
    x, y = data.load_npz(path)
    assert x.shape == (5, 4, 3, 1) and x.dtype == jnp.float32
    np.testing.assert_allclose(x[..., 0], images / 127.5 - 1.0, atol=1e-6)
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    np.testing.assert_array_equal(y, labels)
    assert y.dtype == jnp.int32
    rgb = rng.integers(0, 256, size=(3, 2, 2, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar.npz", images=rgb, labels=labels[:3, None])
    x, y = data.load_npz(str(tmp_path / "cifar.npz"))
    assert x.shape == (3, 2, 2, 3) and y.shape == (3,)
    np.savez(tmp_path / "custom.npz", pics=rgb)
    x, y = data.load_npz(tmp_path / "custom.npz", x_key="pics")
    assert x.shape == (3, 2, 2, 3) and y is None


def test_load_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"[`']path[`']"):
        data.load_npz(tmp_path / "missing.npz")
    with pytest.raises(TypeError, match=r"[`']path[`']"):
        data.load_npz(3)
    np.savez(tmp_path / "a.npz", pics=np.zeros((2, 3, 3), np.uint8), cls=np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=r"[`']x_key[`']"):
        data.load_npz(tmp_path / "a.npz")
    with pytest.raises(ValueError, match=r"[`']x_key[`']"):
        data.load_npz(tmp_path / "a.npz", x_key="nope")
    with pytest.raises(ValueError, match=r"[`']y_key[`']"):
        data.load_npz(tmp_path / "a.npz", x_key="pics", y_key="nope")
    with pytest.raises(ValueError, match=r"[`']y_key[`']"):
        data.load_npz(tmp_path / "a.npz", x_key="pics", y_key="cls")  # 3 labels for 2 images
    np.savez(tmp_path / "b.npz", x=np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"[`']x_key[`']"):
        data.load_npz(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", x=np.zeros((2, 3, 3), np.int32))
    with pytest.raises(ValueError, match=r"[`']x_key[`']"):
        data.load_npz(tmp_path / "c.npz")


def test_load_npz_refuses_nan_and_inf_rows(tmp_path):
    """Float images with NaN or inf in some rows: a ValueError with the number of bad rows
    and the first of their indices (in order); finite float images load unchanged."""
    x = np.random.default_rng(0).uniform(-1, 1, size=(20, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "ok.npz", x=x)
    np.testing.assert_array_equal(data.load_npz(tmp_path / "ok.npz")[0][..., 0], x)
    bad = x.copy()
    rows = [3, 7, 8, 11, 12, 15, 19]
    for i, r in enumerate(rows):
        bad[r, i % 4, 1] = [np.nan, np.inf, -np.inf][i % 3]
    np.savez(tmp_path / "bad.npz", x=bad)
    with pytest.raises(
        ValueError, match=r"7 of 20 rows hold NaN or inf \(rows 3, 7, 8, 11, 12, \.\.\.\)"
    ) as err:
        data.load_npz(tmp_path / "bad.npz")
    assert "bad.npz" in str(err.value)
    with pytest.raises(ValueError, match=r"1 of 2 rows .*\(rows 1\)"):
        data.check_finite(np.array([[0.0, 1.0], [np.nan, 0.0]]), "x")
    data.check_finite(np.zeros((3, 2), np.uint8), "x")  # integers are always finite


def test_load_npz_empty_or_corrupt_file_names_it(tmp_path):
    """A 0-byte file, an archive with no arrays or no images, a truncated archive
    (BadZipFile), a member with a damaged compressed stream, and a lone .npy: each a
    ValueError naming the file."""
    cases = {}
    (tmp_path / "zero.npz").write_bytes(b"")
    cases["zero.npz"] = "empty"
    np.savez(tmp_path / "none.npz")
    cases["none.npz"] = "no arrays"
    np.savez(tmp_path / "noimg.npz", x=np.zeros((0, 3, 3), np.uint8))
    cases["noimg.npz"] = "no images"
    np.savez(tmp_path / "full.npz", x=np.zeros((50, 8, 8), np.uint8))
    raw = (tmp_path / "full.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    cases["cut.npz"] = "not a readable .npz"
    np.savez_compressed(tmp_path / "z.npz", x=np.arange(4096, dtype=np.uint8).reshape(64, 8, 8))
    raw = bytearray((tmp_path / "z.npz").read_bytes())
    raw[len(raw) // 3] ^= 0xFF  # inside the deflate stream of x
    (tmp_path / "flip.npz").write_bytes(bytes(raw))
    cases["flip.npz"] = "damaged"
    np.save(tmp_path / "lone.npy", np.zeros((2, 3, 3), np.uint8))
    cases["lone.npy"] = "single .npy"
    for name, reason in cases.items():
        with pytest.raises(ValueError, match=reason) as err:
            data.load_npz(tmp_path / name)
        assert name in str(err.value), (name, str(err.value))


def take_epochs(it, num_batches):
    return [next(it) for _ in range(num_batches)]


def test_batches_cover_every_example_once_per_epoch_and_reshuffle():
    n = 10
    x = np.arange(n) * 10.0
    y = jnp.arange(n)
    it = data.batches(KEY, (x, y), 3, drop_remainder=False)
    epoch1, epoch2 = take_epochs(it, 4), take_epochs(it, 4)
    for epoch in (epoch1, epoch2):
        assert [len(b[0]) for b in epoch] == [3, 3, 3, 1]
        bx = np.concatenate([b[0] for b in epoch])
        by = np.concatenate([np.asarray(b[1]) for b in epoch])
        np.testing.assert_array_equal(np.sort(by), np.arange(n))  # each example exactly once
        np.testing.assert_array_equal(bx, by * 10.0)  # leaves stay paired
        assert isinstance(epoch[0][0], np.ndarray) and isinstance(epoch[0][1], jax.Array)
    order1 = np.concatenate([np.asarray(b[1]) for b in epoch1])
    order2 = np.concatenate([np.asarray(b[1]) for b in epoch2])
    assert not np.array_equal(order1, order2)  # reshuffled
    # Same key, same stream; drop_remainder keeps full batches only.
    again = take_epochs(data.batches(KEY, (x, y), 3, drop_remainder=False), 8)
    for a, b in zip(epoch1 + epoch2, again, strict=True):
        np.testing.assert_array_equal(a[1], b[1])
    dropped = take_epochs(data.batches(KEY, y, 3), 6)
    assert all(b.shape == (3,) for b in dropped)
    for epoch in (dropped[:3], dropped[3:]):
        assert len(np.unique(np.concatenate([np.asarray(b) for b in epoch]))) == 9


def test_batches_dict_pytree():
    batch = next(data.batches(KEY, {"x": jnp.ones((4, 2, 2)), "y": jnp.zeros(4)}, 2))
    assert batch["x"].shape == (2, 2, 2) and batch["y"].shape == (2,)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(batch_size=-2), ValueError, "batch_size"),
        (dict(batch_size=2.5), TypeError, "batch_size"),
        (dict(batch_size=True), TypeError, "batch_size"),
        (dict(batch_size=11), ValueError, "batch_size"),
        (dict(data=(np.zeros(10), np.zeros(9))), ValueError, "data"),
        (dict(data=()), ValueError, "data"),
        (dict(data=np.float32(1.0)), TypeError, "data"),
        (dict(key=0), TypeError, "key"),
    ],
)
def test_batches_validation(kwargs, error, name):
    args = dict(key=KEY, data=np.zeros(10), batch_size=2) | kwargs
    with pytest.raises(error, match=rf"[`']{name}[`']"):
        data.batches(args["key"], args["data"], args["batch_size"])


@pytest.mark.parametrize("sampler", [*TOY, data.two_class])
@pytest.mark.parametrize(
    ("n", "error"), [(0, ValueError), (-3, ValueError), (2.0, TypeError), (None, TypeError)]
)
def test_sampler_validation_n(sampler, n, error):
    with pytest.raises(error, match=r"[`']n[`']"):
        sampler(KEY, n)


def test_sampler_validation_other():
    with pytest.raises(TypeError, match=r"[`']key[`']"):
        data.two_moons(None, 3)
    with pytest.raises(TypeError, match=r"[`']key[`']"):
        data.checkerboard(np.zeros(3), 3)
    with pytest.raises(ValueError, match=r"[`']radius[`']"):
        data.eight_gaussians(KEY, 3, radius=-1.0)
    with pytest.raises(ValueError, match=r"[`']std[`']"):
        data.eight_gaussians(KEY, 3, std=0.0)
    with pytest.raises(TypeError, match=r"[`']std[`']"):
        data.eight_gaussians_params(std="0.1")
    with pytest.raises(ValueError, match=r"[`']noise[`']"):
        data.two_moons(KEY, 3, noise=-0.1)
    with pytest.raises(TypeError, match=r"[`']noise[`']"):
        data.swiss_roll(KEY, 3, noise=None)
