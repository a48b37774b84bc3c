"""Matplotlib figures (PNG), headless.

Figures are built on `matplotlib.figure.Figure` objects directly (the Agg canvas), never through
pyplot's global state, so they work without a display and never touch the caller's backend.

Conventions, for every figure function here:
- one public function per figure, taking plain data (lists / arrays / floats / str) and an output
  path, returning the path written; `draw_*` helpers draw onto a given Axes so several panels
  (e.g. heatmaps side by side in a report) can reuse them;
- labelled axes, a title, and `bbox_inches="tight"` so nothing is cut off.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

DPI = 150


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kwargs) -> tuple[Figure, np.ndarray]:
    """A headless figure (Agg canvas) and a 2-D array of its axes."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save_figure(fig: Figure, out: str | os.PathLike) -> Path:
    """Write `fig` as PNG to `out` (parent folders created) and return the path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI, bbox_inches="tight")
    return out


# ---------------------------------------------------------------------------------------------
# headwise entropy heatmap (the paper's Figure 1)


def draw_entropy_heatmap(
    ax: Axes, entropy: Sequence[Sequence[float]], vmin: float = 0.0, vmax: float | None = None,
    highlight_from: float | None = None, annotate: bool | None = None,
):
    """Layers (rows, layer 0 on top) x heads (columns) heatmap of headwise entropy on `ax`.

    Cells with entropy >= `highlight_from` (e.g. 3/4 Emax: the top band) get a red outline.
    Values are printed in the cells when the grid is small enough (default: up to 16 x 16).
    Returns the image, for a colour bar.
    """
    e = np.asarray(entropy, dtype=np.float64)
    n_layer, n_head = e.shape
    vmax = float(e.max()) if vmax is None else vmax
    image = ax.imshow(e, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_head))
    ax.set_yticks(range(n_layer))
    if annotate is None:
        annotate = n_layer <= 16 and n_head <= 16
    if annotate:
        size = 8 if max(n_layer, n_head) <= 8 else 6
        mid = vmin + 0.6 * (vmax - vmin)
        for (i, j), value in np.ndenumerate(e):
            colour = "black" if value > mid else "white"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=size, color=colour)
    if highlight_from is not None:
        for i, j in zip(*np.nonzero(e >= highlight_from), strict=True):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    return image


def entropy_heatmap(
    entropy: Sequence[Sequence[float]], out: str | os.PathLike, title: str,
    vmax: float | None = None, emax: float | None = None,
) -> Path:
    """PNG heatmap of headwise entropy (layers x heads) with a colour bar.

    `vmax` fixes the top of the colour scale (e.g. the theoretical maximum entropy, so that
    heatmaps of several models share one scale); `emax` (the model's largest head entropy)
    outlines the heads in the top band [3/4 Emax, Emax].
    """
    e = np.asarray(entropy, dtype=np.float64)
    n_layer, n_head = e.shape
    fig, axes = new_figure(max(4.5, 0.55 * n_head + 2.5), max(3.0, 0.45 * n_layer + 1.6))
    ax = axes[0, 0]
    image = draw_entropy_heatmap(ax, e, vmax=vmax, highlight_from=None if emax is None else 0.75 * emax)
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("entropy (nats)")
    if emax is not None:
        title += f"\nred outline: top band, entropy >= 3/4 Emax = {0.75 * emax:.2f}"
    ax.set_title(title, fontsize=10)
    return save_figure(fig, out)


# ---------------------------------------------------------------------------------------------
# dynamics over training steps (the paper's Figures 3-5)


def draw_lines_over_steps(
    ax: Axes, steps: Sequence[int], values: Sequence[Sequence[float]], labels: Sequence[str], ylabel: str,
) -> None:
    """One line per column of `values` ([step][series]) against `steps`, with a legend."""
    v = np.asarray(values, dtype=np.float64).reshape(len(steps), -1)
    colours = _series_colours(v.shape[1])
    for k in range(v.shape[1]):
        ax.plot(steps, v[:, k], marker="o" if len(steps) <= 30 else None, markersize=3,
                color=colours[k], label=labels[k])
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncols=2 if v.shape[1] > 6 else 1, loc="best")


def _series_colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.9 * k / max(n - 1, 1)) for k in range(n)]


def dynamics_figure(
    steps: Sequence[int], entropy_per_layer: Sequence[Sequence[float]], out: str | os.PathLike, title: str,
    slope_steps: Sequence[int] = (), slopes: Sequence[Sequence[float]] = (), slope_labels: Sequence[str] | None = None,
) -> Path:
    """PNG of mean headwise entropy per layer over training steps, and, when the run has
    learnable slopes, a second panel with the slopes over steps."""
    has_slopes = len(slope_steps) > 0 and len(slopes) > 0
    fig, axes = new_figure(6.5 if not has_slopes else 11.0, 4.0, ncols=2 if has_slopes else 1)
    e = np.asarray(entropy_per_layer, dtype=np.float64)
    draw_lines_over_steps(axes[0, 0], steps, e, [f"layer {i}" for i in range(e.shape[1])], "entropy, mean over heads (nats)")
    axes[0, 0].set_title("headwise entropy per layer")
    if has_slopes:
        n = len(slopes[0])
        labels = list(slope_labels) if slope_labels is not None else [f"layer {i}" for i in range(n)]
        draw_lines_over_steps(axes[0, 1], slope_steps, slopes, labels, "leaky ReLU negative slope")
        axes[0, 1].axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        axes[0, 1].set_title("learnable slopes")
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)
