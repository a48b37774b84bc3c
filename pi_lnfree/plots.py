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
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from pi_lnfree.files import atomic_write

DPI = 150


def new_figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **kwargs) -> tuple[Figure, np.ndarray]:
    """A headless figure (Agg canvas) and a 2-D array of its axes."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save_figure(fig: Figure, out: str | os.PathLike) -> Path:
    """Write `fig` as PNG to `out` atomically (parent folders created) and return the path."""
    with atomic_write(out, "wb") as f:
        fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")
    return Path(out)


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
    if len(labels) != v.shape[1]:
        raise ValueError(f"{len(labels)} labels for {v.shape[1]} series")
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
    max_entropy: float | None = None,
) -> Path:
    """PNG of mean headwise entropy per layer over training steps (with the theoretical maximum
    as a dashed line when given), and, when the run has learnable slopes, a second panel with
    the slopes over steps."""
    has_slopes = len(slope_steps) > 0 and len(slopes) > 0
    fig, axes = new_figure(6.5 if not has_slopes else 11.0, 4.0, ncols=2 if has_slopes else 1)
    e = np.asarray(entropy_per_layer, dtype=np.float64)
    if max_entropy is not None:
        axes[0, 0].axhline(max_entropy, color="grey", linewidth=0.8, linestyle="--", label="max (uniform attention)")
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


def slope_legend(dyn: dict) -> list[str]:
    """Legend labels of the learnable slopes of a `diagnostics.run_dynamics` result: the
    recorded `slope_labels` when they match the slopes, else "slope k"."""
    n = len(dyn["slopes"][0]) if dyn["slopes"] else 0
    labels = dyn.get("slope_labels")
    return list(labels) if labels and len(labels) == n else [f"slope {k}" for k in range(n)]


def write_entropy_heatmap(result: dict, out: str | os.PathLike) -> Path:
    """The layers x heads heatmap of a `diagnostics.entropy_checkpoint` result, on the
    0..max_entropy scale (`pi-lnfree entropy --plot`)."""
    check = result["attention"]
    title = (f"Headwise attention entropy: {result['label']} ({result['variant']})\n"
             f"overload: {result['overload_fraction']:.0%} of heads in the top band; "
             f"Emin/Emax {check['min_over_max']:.2f}; uniform: {check['uniform_share']:.0%} of heads")
    return entropy_heatmap(result["entropy"], out, title, vmax=result["max_entropy"], emax=result["emax"])


def write_dynamics_figure(dyn: dict, out: str | os.PathLike) -> Path:
    """Entropy-per-layer (and slope) history of a `diagnostics.run_dynamics` result
    (`pi-lnfree entropy --dynamics`)."""
    name = f"{dyn['label']} ({dyn['variant']})" if "label" in dyn else str(Path(dyn["metrics"]).parent)
    return dynamics_figure(dyn["steps"], dyn["entropy_per_layer"], out, f"Training dynamics: {name}",
                           dyn["slope_steps"], dyn["slopes"], slope_legend(dyn), max_entropy=dyn.get("max_entropy"))


# =============================================================================================
# Report figures: several runs of one model family side by side.


def _panel_grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, cols) for n panels: as square as possible, at most max_cols columns."""
    import math

    cols = min(n if n <= 3 else math.ceil(math.sqrt(n)), max_cols)
    return (n + cols - 1) // cols, cols


def set_panel_title(ax: Axes, title: str, width_in: float, fontsize: float) -> None:
    """Title a panel of `width_in` inches, each line wrapped to fit it: a long run label (e.g. a
    configuration with its notes) would otherwise run into the neighbouring panel."""
    chars = max(16, int(width_in * 72 / (0.6 * fontsize)))  # a character is about 0.6 em wide
    ax.set_title("\n".join(textwrap.fill(line, chars) for line in title.split("\n")), fontsize=fontsize)


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.ravel()[used:]:
        ax.set_visible(False)


def entropy_heatmaps_grid(
    panels: Sequence[tuple[str, Sequence[Sequence[float]], float | None]], out: str | os.PathLike, title: str,
    vmax: float | None = None,
) -> Path:
    """Headwise entropy heatmaps of several models side by side on one colour scale.

    `panels`: (panel title, entropy matrix (layers x heads), the model's Emax or None); heads in
    the model's top band (>= 3/4 of its Emax) get a red outline. `vmax` tops the shared scale
    (e.g. the theoretical maximum entropy); default: the largest value in any panel.
    """
    mats = [np.asarray(m, dtype=np.float64) for _, m, _ in panels]
    top = vmax if vmax is not None else max(float(m.max()) for m in mats)
    n_layer, n_head = mats[0].shape
    rows, cols = _panel_grid(len(panels))
    panel_w = max(3.2, 0.5 * n_head + 1.2)
    fig, axes = new_figure(cols * panel_w + 1.0, rows * max(2.8, 0.42 * n_layer + 1.5), nrows=rows, ncols=cols)
    image = None
    for ax, (name, _, emax), e in zip(axes.ravel(), panels, mats, strict=False):
        image = draw_entropy_heatmap(ax, e, vmax=top, highlight_from=None if emax is None else 0.75 * emax)
        set_panel_title(ax, name, panel_w, 9)
    _hide_unused(axes, len(panels))
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.9)
    bar.set_label("entropy (nats)")
    fig.suptitle(title + "\nred outline: heads in the model's top band (entropy >= 3/4 of its Emax)", fontsize=10)
    return save_figure(fig, out)


def loss_curves_figure(
    series: Sequence[tuple[str, Sequence[int], Sequence[float], Sequence[int], Sequence[float]]],
    out: str | os.PathLike, title: str,
) -> Path:
    """Training loss (left) and evaluation loss (right) over steps, one line per run.

    `series`: (label, train steps, train losses, eval steps, eval losses); empty lists are skipped.
    """
    fig, axes = new_figure(11.0, 4.0, ncols=2)
    colours = _series_colours(len(series))
    for k, (label, ts, tl, es, el) in enumerate(series):
        if len(ts):
            axes[0, 0].plot(ts, tl, color=colours[k], label=label, linewidth=1.2)
        if len(es):
            axes[0, 1].plot(es, el, color=colours[k], label=label, marker="o", markersize=3)
    for ax, name in zip(axes[0], ("training loss (mean since previous log line)", "evaluation loss"), strict=True):
        ax.set_xlabel("training step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


def entropy_dynamics_grid(
    panels: Sequence[tuple[str, Sequence[int], Sequence[Sequence[float]]]], out: str | os.PathLike, title: str,
) -> Path:
    """Mean headwise entropy per layer over training steps, one panel per run, shared y axis.

    `panels`: (panel title, steps, entropy_per_layer as [step][layer]).
    """
    rows, cols = _panel_grid(len(panels))
    panel_w = 4.2
    fig, axes = new_figure(cols * panel_w, rows * 3.4, nrows=rows, ncols=cols, sharey=True)
    for ax, (name, steps, values) in zip(axes.ravel(), panels, strict=False):
        v = np.asarray(values, dtype=np.float64)
        draw_lines_over_steps(ax, steps, v, [f"layer {i}" for i in range(v.shape[1])], "entropy, mean over heads (nats)")
        ax.ticklabel_format(axis="y", useOffset=False)
        set_panel_title(ax, name, panel_w, 10)
    _hide_unused(axes, len(panels))
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


def slope_dynamics_figure(
    panels: Sequence[tuple[str, Sequence[int], Sequence[Sequence[float]], Sequence[str]]],
    out: str | os.PathLike, title: str,
) -> Path:
    """Learnable leaky-ReLU slopes over training steps, one panel per run that has them.

    `panels`: (panel title, steps, slopes as [step][slope], one legend label per slope).
    """
    rows, cols = _panel_grid(len(panels), max_cols=3)
    panel_w = 4.6
    fig, axes = new_figure(cols * panel_w, rows * 3.4, nrows=rows, ncols=cols, sharey=True)
    for ax, (name, steps, values, labels) in zip(axes.ravel(), panels, strict=False):
        draw_lines_over_steps(ax, steps, values, list(labels), "leaky ReLU negative slope")
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        set_panel_title(ax, name, panel_w, 10)
    _hide_unused(axes, len(panels))
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


def operator_cost_bars(
    configs: Sequence[str], categories: Sequence[str], nbytes: Sequence[Sequence[float]],
    seconds: Sequence[Sequence[float]], out: str | os.PathLike, title: str, seconds_label: str,
) -> Path:
    """Stacked bars per configuration: bytes (left, in MB) and latency (right) by operator category.

    `nbytes` and `seconds` are [config][category]; categories that are zero everywhere are left out
    of the legend.
    """
    b = np.asarray(nbytes, dtype=np.float64).reshape(len(configs), len(categories)) / 1e6
    s = np.asarray(seconds, dtype=np.float64).reshape(len(configs), len(categories))
    keep = [j for j in range(len(categories)) if b[:, j].any() or s[:, j].any()]
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    fig, axes = new_figure(max(9.0, 1.6 * len(configs) + 5.0), 4.2, ncols=2)
    x = np.arange(len(configs))
    for ax, values, ylabel in ((axes[0, 0], b, "communication per sequence (MB)"), (axes[0, 1], s, seconds_label)):
        bottom = np.zeros(len(configs))
        for j in keep:
            ax.bar(x, values[:, j], 0.6, bottom=bottom, color=cmap(j % 10), label=categories[j])
            bottom += values[:, j]
        if bottom.max() > 0:
            ax.set_ylim(0, 1.05 * bottom.max())  # room above the tallest stack
        ax.set_xticks(x, list(configs), rotation=20 if len(configs) > 4 else 0, ha="right" if len(configs) > 4 else "center")
        ax.set_xlabel("configuration")
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0, 1].legend(title="operator", fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, out)


def cross_engine_savings_bars(
    configs: Sequence[str], profiles: Sequence[str], savings: Sequence[Sequence[float | None]],
    out: str | os.PathLike, title: str,
) -> Path:
    """Grouped bars: per configuration, the communication saving vs the baseline (x-fold) under
    each profile, one colour per profile, each bar labelled with its value.

    `savings` is [profile][config]; None (no result) leaves a gap labelled "n/a". A dashed line
    marks 1x (no saving).
    """
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    n = max(len(profiles), 1)
    width = 0.8 / n
    fig, axes = new_figure(max(6.0, 1.3 * len(configs) * n + 2.5), 4.0)
    ax = axes[0, 0]
    x = np.arange(len(configs))
    for k, (profile, values) in enumerate(zip(profiles, savings, strict=True)):
        pos = x - 0.4 + width * (k + 0.5)
        heights = [np.nan if v is None else float(v) for v in values]
        bars = ax.bar(pos, np.nan_to_num(heights, nan=0.0), width * 0.92, color=cmap(k % 10), label=profile)
        labels = ["n/a" if np.isnan(h) else f"{h:.2f}x" for h in heights]
        ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.axhline(1.0, color="0.3", linestyle="--", linewidth=0.8)
    ax.set_xticks(x, list(configs))
    ax.set_xlabel("configuration")
    ax.set_ylabel("communication saving vs baseline (x)")
    ax.margins(y=0.15)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="profile", fontsize=8, loc="upper left")
    ax.set_title(title, fontsize=11)
    return save_figure(fig, out)
