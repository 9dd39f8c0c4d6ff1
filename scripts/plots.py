"""Figures of the scripts (matplotlib, Agg backend): 2-D scatter panels and image grids."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#999999",
    "axes.titlesize": 10,
    "font.size": 9,
    "xtick.color": "#777777",
    "ytick.color": "#777777",
    "figure.facecolor": "white",
}
DATA_COLOR = "#4a4a4a"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


def _limits(x: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(x, [0.5, 99.5])
    pad = 0.15 * (hi - lo)
    return float(lo - pad), float(hi + pad)


def scatter_panels(
    path: str,
    data: np.ndarray,
    panels: list[tuple[str, np.ndarray]],
    trajectories: tuple[str, np.ndarray] | None = None,
    suptitle: str = "",
) -> str:
    """One row of equal-aspect 2-D panels: the data, each `(title, samples [N, 2])`, and
    optionally `(title, trajectories [S, B, 2])` drawn as lines over the data."""
    lim = _limits(data)
    n = 1 + len(panels) + (trajectories is not None)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, n, figsize=(3.1 * n, 3.4), squeeze=False)
        axes = axes[0]
        axes[0].scatter(data[:, 0], data[:, 1], s=1.5, c=DATA_COLOR, alpha=0.35, linewidths=0)
        axes[0].set_title(f"held-out data (n={len(data)})")
        for ax, (title, x), color in zip(axes[1:], panels, COLORS, strict=False):
            ax.scatter(x[:, 0], x[:, 1], s=1.5, c=color, alpha=0.35, linewidths=0)
            ax.set_title(title)
        if trajectories is not None:
            title, paths = trajectories
            ax = axes[-1]
            ax.scatter(data[:, 0], data[:, 1], s=1, c="#cccccc", alpha=0.3, linewidths=0)
            # Colour each path by the direction of its end point, so paths to one mode match.
            angles = np.arctan2(paths[-1, :, 1], paths[-1, :, 0])
            sector = np.round(angles / (np.pi / 4)).astype(int) % 8
            colors = plt.get_cmap("tab10")(sector)
            for i in range(paths.shape[1]):
                ax.plot(paths[:, i, 0], paths[:, i, 1], lw=0.8, alpha=0.85, c=colors[i])
            ax.scatter(paths[0, :, 0], paths[0, :, 1], s=6, c="#aaaaaa", label="$x_T$", zorder=3)
            ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=10, c=colors, label="$x_0$", zorder=3)
            ax.legend(loc="upper right", fontsize=7, frameon=False, handletextpad=0.1)
            ax.set_title(title)
        for ax in axes:
            ax.set_xlim(lim)
            ax.set_ylim(lim)
            ax.set_aspect("equal")
            ax.tick_params(labelsize=7)
        if suptitle:
            fig.suptitle(suptitle, fontsize=11)
        fig.tight_layout()
        return _save(fig, path)


def _grid(images: np.ndarray, cols: int) -> np.ndarray:
    """`[N, H, W, C]` in about `[-1, 1]` to one `[rows*(H+1)-1, cols*(W+1)-1, C]` mosaic in [0, 1]."""
    n, h, w, c = images.shape
    rows = -(-n // cols)
    out = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, c))
    for i, img in enumerate(np.clip((images + 1.0) / 2.0, 0.0, 1.0)):
        r, q = divmod(i, cols)
        out[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = img
    return out


def image_panels(
    path: str, panels: list[tuple[str, np.ndarray]], suptitle: str = "", cols: int = 10
) -> str:
    """Side-by-side image grids, one per `(title, images [N, H, W, C])`."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.9), squeeze=False)
        for ax, (title, images) in zip(axes[0], panels, strict=True):
            mosaic = _grid(images, cols)
            gray = mosaic.shape[-1] == 1
            ax.imshow(mosaic[..., 0] if gray else mosaic, cmap="gray" if gray else None)
            ax.set_title(title)
            ax.axis("off")
        if suptitle:
            fig.suptitle(suptitle, fontsize=11)
        fig.tight_layout()
        return _save(fig, path)


def samples_figure(path: str, title: str, x: np.ndarray, data: np.ndarray | None = None) -> str:
    """One panel of samples: a scatter over `data` for 2-D `x [N, 2]`, else an image grid of
    the first 100 images `x [N, H, W, C]`."""
    if x.ndim == 2:
        return scatter_panels(path, data, [(title, x)])
    return image_panels(path, [(title, x[:100])])
