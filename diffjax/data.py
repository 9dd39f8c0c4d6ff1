"""Data: 2-D toy sets with known parameters, sklearn's 8x8 digits, local `.npz` images, batching.

Every sampler is a pure function of a `jax.random` key (same key, same data). The 2-D sets
are scaled to roughly unit standard deviation per coordinate (exact constants below), except
`eight_gaussians`, whose default radius 2 gives a per-coordinate std of about 1.42.
"""

from __future__ import annotations

import functools
import math
import os
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from diffjax._checks import check_key, check_positive_int

EIGHT_GAUSSIANS_RADIUS = 2.0
"""Distance of the 8 component means from the origin."""
EIGHT_GAUSSIANS_STD = 0.1
"""Isotropic standard deviation of each of the 8 components."""

TWO_CLASS_MEANS = ((1.0, 1.0), (-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0))
"""Component means of `two_class`, an XOR layout; components 0, 1 are class 0, 2, 3 class 1."""
TWO_CLASS_LABELS = (0, 0, 1, 1)
"""Class label of each `two_class` component."""
TWO_CLASS_STD = 0.3
"""Isotropic standard deviation of every `two_class` component."""


def _check_std(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a float, got {type(value).__name__}.")
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be positive and finite, got {value}.")
    return float(value)


def _check_noise(value, name: str = "noise") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a float, got {type(value).__name__}.")
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"`{name}` must be non-negative and finite, got {value}.")
    return float(value)


def eight_gaussians_params(
    *, radius: float = EIGHT_GAUSSIANS_RADIUS, std: float = EIGHT_GAUSSIANS_STD
) -> tuple[Array, Array, Array]:
    r"""`(weights [8], means [8, 2], stds [8])` of the `eight_gaussians` mixture.

    $w_k = 1/8$, $\mu_k = r(\cos(2\pi k/8), \sin(2\pi k/8))$, $\sigma_k = $ `std`, $k = 0..7$.
    Mean 0, covariance $(r^2/2 + \sigma^2) I$.
    """
    radius, std = _check_std(radius, "radius"), _check_std(std, "std")
    angles = 2.0 * jnp.pi * jnp.arange(8) / 8
    means = radius * jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1)
    return jnp.full((8,), 1.0 / 8), means, jnp.full((8,), std)


def _mixture_sample(key, n: int, weights: Array, means: Array, stds: Array) -> tuple[Array, Array]:
    k_comp, k_noise = jax.random.split(key)
    comp = jax.random.categorical(k_comp, jnp.log(weights), shape=(n,))
    x = means[comp] + stds[comp][:, None] * jax.random.normal(k_noise, (n, means.shape[1]))
    return x, comp


def eight_gaussians(
    key, n: int, *, radius: float = EIGHT_GAUSSIANS_RADIUS, std: float = EIGHT_GAUSSIANS_STD
) -> Array:
    """`n` points `[n, 2]` from the equal-weight mixture of 8 isotropic Gaussians on a circle.

    The exact parameters are `eight_gaussians_params(radius=radius, std=std)`
    (defaults `EIGHT_GAUSSIANS_RADIUS = 2`, `EIGHT_GAUSSIANS_STD = 0.1`).
    """
    key, n = check_key(key), check_positive_int(n, "n")
    x, _ = _mixture_sample(key, n, *eight_gaussians_params(radius=radius, std=std))
    return x


def two_class_params() -> tuple[Array, Array, Array, Array]:
    r"""`(weights [4], means [4, 2], stds [4], labels [4] int32)` of `two_class`.

    $p(x) = \sum_k w_k N(x \mid \mu_k, \sigma^2 I)$ with $w_k = 1/4$, means `TWO_CLASS_MEANS`
    and $\sigma$ = `TWO_CLASS_STD` = 0.3; component $k$ has class `labels[k]` (`TWO_CLASS_LABELS`).
    So $p(y) = 1/2$, $p(x \mid y)$ is the mixture of the components of class $y$, and
    $p(y \mid x) = \sum_{k: \ell_k = y} w_k N_k(x) / \sum_k w_k N_k(x)$ (likewise for the noised
    $x_t$, with the noised components).
    """
    return (
        jnp.full((4,), 0.25),
        jnp.asarray(TWO_CLASS_MEANS),
        jnp.full((4,), TWO_CLASS_STD),
        jnp.asarray(TWO_CLASS_LABELS, jnp.int32),
    )


def two_class(key, n: int) -> tuple[Array, Array]:
    """Labelled 2-D mixture (XOR layout): `(x [n, 2] float, y [n] int32)`, see `two_class_params`."""
    key, n = check_key(key), check_positive_int(n, "n")
    weights, means, stds, labels = two_class_params()
    x, comp = _mixture_sample(key, n, weights, means, stds)
    return x, labels[comp]


def _moons_curve(u, xp=jnp):
    """Noise-free two moons at `u` in `[0, 1)`: `u < 1/2` upper moon, else lower moon."""
    upper = u < 0.5
    theta = xp.pi * xp.where(upper, 2 * u, 2 * u - 1)
    x = xp.where(upper, xp.cos(theta), 1.0 - xp.cos(theta))
    y = xp.where(upper, xp.sin(theta), 0.5 - xp.sin(theta))
    return xp.stack([x, y], axis=-1)


def _swiss_roll_curve(u, xp=jnp):
    """Noise-free 2-D swiss roll at `u` in `[0, 1)`: `s (cos s, sin s)`, `s = 1.5 pi (1 + 2u)`."""
    s = 1.5 * xp.pi * (1.0 + 2.0 * u)
    return xp.stack([s * xp.cos(s), s * xp.sin(s)], axis=-1)


@functools.cache
def _curve_moments(name: str) -> tuple[np.ndarray, float]:
    """Mean `[2]` and mean per-coordinate variance of a noise-free curve at `u ~ U[0, 1)`.

    Computed once in float64 NumPy with the midpoint rule on 10^6 points.
    """
    curve = {"moons": _moons_curve, "swiss_roll": _swiss_roll_curve}[name]
    pts = curve((np.arange(1_000_000) + 0.5) / 1_000_000, xp=np)
    return pts.mean(axis=0), float(pts.var(axis=0).mean())


def _standardized_curve(key, n: int, name: str, noise: float) -> Array:
    """Curve points plus `N(0, noise^2)` noise, centred and scaled by one factor (shape kept)
    so that the mean per-coordinate variance is 1."""
    key, n = check_key(key), check_positive_int(n, "n")
    noise = _check_noise(noise)
    curve = {"moons": _moons_curve, "swiss_roll": _swiss_roll_curve}[name]
    mean, var = _curve_moments(name)
    k_u, k_noise = jax.random.split(key)
    x = curve(jax.random.uniform(k_u, (n,))) + noise * jax.random.normal(k_noise, (n, 2))
    return (x - jnp.asarray(mean, x.dtype)[None, :]) / math.sqrt(var + noise**2)


def two_moons(key, n: int, *, noise: float = 0.05) -> Array:
    r"""`[n, 2]` points of sklearn's two moons, centred and scaled to unit average variance.

    Before scaling: with prob. 1/2 the upper moon $(\cos\theta, \sin\theta)$, else the lower
    $(1 - \cos\theta, 1/2 - \sin\theta)$, $\theta \sim U[0, \pi]$, plus $N(0, \text{noise}^2 I)$.
    Then the exact mean is subtracted and both coordinates are divided by one factor so that
    the per-coordinate variances average to 1 (x std ≈ 1.23, y std ≈ 0.70 at noise 0.05).
    """
    return _standardized_curve(key, n, "moons", noise)


def swiss_roll(key, n: int, *, noise: float = 0.5) -> Array:
    r"""`[n, 2]` points of the 2-D swiss roll, centred and scaled to unit average variance.

    Before scaling: $s (\cos s, \sin s)$ with $s = 1.5\pi(1 + 2u)$, $u \sim U[0, 1)$ (sklearn's
    `make_swiss_roll` projected on its x-z plane) plus $N(0, \text{noise}^2 I)$; then centred
    and divided by one factor so that the per-coordinate variances average to 1.
    """
    return _standardized_curve(key, n, "swiss_roll", noise)


def checkerboard(key, n: int) -> Array:
    r"""`[n, 2]` points uniform on the dark squares of a 4x4 checkerboard, unit std per coordinate.

    Before scaling: $x_1 \sim U[-2, 2)$ and $x_2$ uniform on the two cells of $[-2, 2)$ in the
    column of $x_1$ with $\lfloor x_1 \rfloor + \lfloor x_2 \rfloor$ even. Both marginals are
    $U[-2, 2)$ (std $2/\sqrt{3}$); the points are divided by $2/\sqrt{3}$, so the support is
    $[-\sqrt{3}, \sqrt{3})^2$.
    """
    key, n = check_key(key), check_positive_int(n, "n")
    k1, k2, k3 = jax.random.split(key, 3)
    x1 = jax.random.uniform(k1, (n,), minval=-2.0, maxval=2.0)
    row = 2.0 * jax.random.randint(k2, (n,), -1, 1) + jnp.mod(jnp.floor(x1), 2.0)
    x2 = row + jax.random.uniform(k3, (n,))
    return jnp.stack([x1, x2], axis=-1) * (math.sqrt(3.0) / 2.0)


def _scale_images(x: np.ndarray, name: str) -> np.ndarray:
    """uint8 `0..255` -> float32 `[-1, 1]`; floats are kept as they are (cast to float32)."""
    if x.dtype == np.uint8:
        return (x.astype(np.float32) / 127.5 - 1.0).astype(np.float32)
    if np.issubdtype(x.dtype, np.floating):
        return x.astype(np.float32)
    raise ValueError(f"`{name}` must hold uint8 or float images, got dtype {x.dtype}.")


def digits() -> tuple[Array, Array]:
    """scikit-learn's bundled 8x8 digits: `(x [1797, 8, 8, 1] float32 in [-1, 1], y [1797] int32)`.

    Pixel values `0..16` are mapped to `v / 8 - 1`. Needs scikit-learn (`pip install
    diffjax[scripts]`); nothing is downloaded.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "`diffjax.data.digits` needs scikit-learn: pip install 'diffjax[scripts]'."
        ) from err
    ds = load_digits()
    x = np.asarray(ds.images, np.float32).reshape(-1, 8, 8, 1) / 8.0 - 1.0
    return jnp.asarray(x), jnp.asarray(ds.target, jnp.int32)


def check_finite(x, name: str) -> None:
    """`ValueError` when rows of `x` `[N, ...]` hold NaN or inf: their count and first indices.

    A single non-finite value makes every DSM loss (and gradient) of a batch holding it NaN.
    """
    x = np.asarray(x)
    bad = _nonfinite_rows(x)
    if bad.size:
        raise _nonfinite_error(name, bad.size, bad[:5], x.shape[0])


def _nonfinite_rows(x: np.ndarray) -> np.ndarray:
    """Indices of the rows of `x` `[N, ...]` holding NaN or inf (none for integer arrays)."""
    if not np.issubdtype(x.dtype, np.inexact):
        return np.zeros(0, np.intp)
    return np.flatnonzero(~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1))


def _nonfinite_error(name: str, count: int, first, num_rows: int) -> ValueError:
    """The `check_finite` error: `count` of `num_rows` rows bad, `first` their first indices."""
    shown = ", ".join(map(str, first[:5])) + (", ..." if count > 5 else "")
    return ValueError(
        f"{name}: {count} of {num_rows} rows hold NaN or inf (rows {shown}); "
        "remove or repair them."
    )


_X_KEYS = ("x_train", "images", "x", "X", "train_images", "data")
_Y_KEYS = ("y_train", "labels", "y", "Y", "train_labels", "targets")
# What a damaged or non-npz file raises in `np.load` or when a member is read.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


def _check_npz_path(path) -> None:
    """`TypeError` unless `path` is a str or os.PathLike; `FileNotFoundError` unless a file."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a str or os.PathLike, got {type(path).__name__}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"`path` {os.fspath(path)!r} does not exist; diffjax never downloads data, save the "
            "arrays with numpy.savez first."
        )


def _open_npz(path) -> np.lib.npyio.NpzFile:
    """The `.npz` at `path`, opened (a context manager); `ValueError` naming the file when it
    is empty, not an `.npz` archive, or damaged."""
    where = repr(os.fspath(path))
    if os.path.getsize(path) == 0:
        raise ValueError(f"{where} is empty (0 bytes), not an .npz archive.")
    try:
        f = np.load(path, allow_pickle=False)
    except _READ_ERRORS as err:
        raise ValueError(
            f"{where} is not a readable .npz archive ({type(err).__name__}: {err})."
        ) from err
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{where} holds a single .npy array, not an .npz archive; use numpy.savez."
        )
    return f


def _npz_keys(f: np.lib.npyio.NpzFile, where: str, x_key: str | None, y_key: str | None):
    """`(x_key, y_key)` of the open `.npz` `f` (`y_key` `None` when absent and not asked for):
    the given keys, else the first present of `_X_KEYS` / `_Y_KEYS`; `ValueError` naming the
    file `where` when it holds no arrays or lacks the keys."""
    keys = list(f.keys())
    if not keys:
        raise ValueError(f"{where} holds no arrays.")
    if x_key is None:
        x_key = next((k for k in _X_KEYS if k in keys), None)
        if x_key is None:
            raise ValueError(
                f"`x_key`: none of {_X_KEYS} is in {where} (keys: {keys}); pass x_key."
            )
    elif x_key not in keys:
        raise ValueError(f"`x_key` {x_key!r} is not in {where} (keys: {keys}).")
    if y_key is None:
        y_key = next((k for k in _Y_KEYS if k in keys), None)
    elif y_key not in keys:
        raise ValueError(f"`y_key` {y_key!r} is not in {where} (keys: {keys}).")
    return x_key, y_key


def _damaged(where: str, err: BaseException) -> ValueError:
    """The error for an `.npz` (named by `where`) whose member could not be read."""
    return ValueError(
        f"{where} is damaged: reading its arrays failed ({type(err).__name__}: {err})."
    )


def _read_npz(path, x_key: str | None, y_key: str | None):
    """`(x_key, x, y_key, y)` read from the `.npz` at `path`; `ValueError` naming the file
    when it is empty, not an `.npz` archive, damaged, or lacks the keys."""
    where = repr(os.fspath(path))
    with _open_npz(path) as f:
        x_key, y_key = _npz_keys(f, where, x_key, y_key)
        try:
            x = np.asarray(f[x_key])
            y = None if y_key is None else np.asarray(f[y_key])
        except _READ_ERRORS as err:
            raise _damaged(where, err) from err
    return x_key, x, y_key, y


def _image_shape(shape: tuple[int, ...], x_key: str, where: str) -> tuple[int, ...]:
    """NHWC shape of the images `x_key` of shape `shape` (`[N, H, W]` gets a channel axis);
    `ValueError` for another rank or no images (`where` names the file)."""
    shape = (*shape, 1) if len(shape) == 3 else tuple(shape)
    if len(shape) != 4:
        raise ValueError(
            f"`x_key` {x_key!r} must hold images [N, H, W] or [N, H, W, C] (NHWC), got shape {shape}."
        )
    if shape[0] == 0:
        raise ValueError(f"`x_key` {x_key!r} of {where} holds no images (shape {shape}).")
    return shape


def _check_labels(y: np.ndarray, num: int, y_key: str) -> np.ndarray:
    """`y` as `[num]` (`[num, 1]` is flattened, a view); `ValueError` unless integer `[num]`.

    Reads only the shape and dtype, so `y` may be a memory map."""
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.shape != (num,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"`y_key` {y_key!r} must hold integer labels of shape [N] = [{num}], "
            f"got dtype {y.dtype} and shape {y.shape}."
        )
    return y


def _convert_images(x: np.ndarray, out: np.ndarray, name: str, *, chunk: int) -> None:
    """Fill float32 `out` with the images `x` (same shape) mapped by `_scale_images`, `chunk`
    rows at a time, so memory maps larger than memory work (memory about one chunk).

    Then the `check_finite` error (named `name`) for the rows with NaN or inf, counted over
    all of `x`."""
    count, first = 0, []
    for start in range(0, x.shape[0], chunk):
        part = _scale_images(np.asarray(x[start : start + chunk]), "x_key")
        bad = _nonfinite_rows(part)
        count += bad.size
        first.extend((bad[: 5 - len(first)] + start).tolist())
        out[start : start + chunk] = part
    if count:
        raise _nonfinite_error(name, count, first, x.shape[0])


_LOAD_CHUNK = 4096
"""Images `load_npz` converts at a time (a float32 copy of this many images at once)."""


def load_npz(
    path: str | os.PathLike, *, x_key: str | None = None, y_key: str | None = None
) -> tuple[Array, Array | None]:
    """Images (and labels) from a local `.npz` file such as MNIST or CIFAR-10; never downloads.

    The images are the array `x_key`, else the first present of `x_train`, `images`, `x`, `X`,
    `train_images`, `data`; the labels `y_key`, else the first of `y_train`, `labels`, `y`,
    `Y`, `train_labels`, `targets` (or `None` when there is none and `y_key` is not given).

    Returns:
        `(x [N, H, W, C] float32, y [N] int32 | None)`: uint8 pixels `0..255` are mapped to
        `v / 127.5 - 1` in `[-1, 1]` (float images are kept as they are); `[N, H, W]`
        grayscale images get a channel axis.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError (naming the file): an empty, damaged or non-npz file; missing keys, wrong
            ranks, no images, images with NaN or inf (their count and first indices), or
            labels that do not match the images.
    """
    _check_npz_path(path)
    x_key, x, y_key, y = _read_npz(path, x_key, y_key)
    where = repr(os.fspath(path))
    x = x.reshape(_image_shape(x.shape, x_key, where))
    if y is not None:
        y = jnp.asarray(_check_labels(y, x.shape[0], y_key), jnp.int32)
    out = np.empty(x.shape, np.float32)
    _convert_images(x, out, f"`x_key` {x_key!r} of {where}", chunk=_LOAD_CHUNK)
    return jnp.asarray(out), y


def batches(key, data: Any, batch_size: int, *, drop_remainder: bool = True) -> Iterator[Any]:
    """Infinite iterator of shuffled minibatches of `data`, reshuffled every epoch.

    `data` is an array `[N, ...]` or a pytree of arrays sharing the leading axis `N` (e.g.
    `(x, y)`); each batch has the same structure with leading axis `batch_size`. Epoch `e`
    visits the examples in the order `jax.random.permutation(fold_in(key, e), N)`, so every
    example appears exactly once per epoch and the stream is a pure function of `key`. With
    `drop_remainder=True` the last `N % batch_size` examples of each permutation are skipped;
    otherwise the epoch ends with one smaller batch. NumPy leaves stay NumPy, JAX leaves JAX.
    """
    key = check_key(key)
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("`data` must be an array or a non-empty pytree of arrays.")
    if any(not hasattr(a, "shape") or len(a.shape) < 1 for a in leaves):
        raise TypeError("`data` leaves must be arrays with a leading example axis.")
    n = leaves[0].shape[0]
    if any(a.shape[0] != n for a in leaves):
        raise ValueError(
            f"`data` leaves must share the leading axis, got {[tuple(a.shape) for a in leaves]}."
        )
    batch_size = check_positive_int(batch_size, "batch_size")
    if batch_size > n:
        raise ValueError(f"`batch_size` must be <= the number of examples {n}, got {batch_size}.")
    return _batch_iterator(key, data, n, batch_size, bool(drop_remainder))


def _batch_iterator(key, data, n: int, batch_size: int, drop_remainder: bool) -> Iterator[Any]:
    stop = n - n % batch_size if drop_remainder else n
    epoch = 0
    while True:
        perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), n))
        for start in range(0, stop, batch_size):
            idx = perm[start : start + batch_size]
            yield jax.tree.map(lambda a, idx=idx: a[idx], data)
        epoch += 1
