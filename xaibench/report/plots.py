"""Figures of the report and of `explain`, drawn with matplotlib's Agg canvas (no display, no
pyplot state): mean insertion/deletion curves, saliency overlays, sanity-check correlations."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
PANEL_INCHES = 2.4
"""Side of one image panel; figures of n x m panels are n * 240 by m * 240 pixels (plus titles)."""
OVERLAY_ALPHA = 0.5
COLORMAP = "jet"


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes at `DPI`, at exactly its size in inches x DPI."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def curve_positions(points: int, include_start: bool) -> np.ndarray:
    """(points,) the share of pixels changed at each curve point, k / n, as the AUC rules take
    them (evenly spaced; the last step may change fewer pixels when step does not divide HW)."""
    steps = points - 1 if include_start else points
    first = 0 if include_start else 1
    return np.arange(first, first + points) / steps


def mean_curves_figure(
    curves: Mapping[str, Mapping[str, np.ndarray]], include_start: bool, title: str = ""
) -> Figure:
    """One panel per curve kind ("insertion", "deletion"): the mean curve of each method.

    curves: method -> {kind: (N, points) scores per image (NaN rows, flagged images, ignored)}.
    The legend gives each method's mean AUC (mean of the per-image curve means: the `mean` rule).
    """
    kinds = [k for k in ("insertion", "deletion") if any(k in c for c in curves.values())]
    figure = Figure(figsize=(5.2 * max(len(kinds), 1), 3.6), layout="constrained")
    for column, kind in enumerate(kinds):
        axes = figure.add_subplot(1, len(kinds), column + 1)
        for method, by_kind in curves.items():
            if kind not in by_kind:
                continue
            mean = np.nanmean(by_kind[kind], axis=0)
            axes.plot(curve_positions(len(mean), include_start), mean, label=method, lw=1.6)
        axes.set_title(kind.capitalize())
        axes.set_xlabel("share of pixels " + ("inserted" if kind == "insertion" else "deleted"))
        axes.set_ylabel("mean score of the class explained")
        axes.set_xlim(0, 1)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, frameon=False)
    if title:
        figure.suptitle(title)
    return figure


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """(H, W, 3) image in [0, 1] and (H, W) map -> (H, W, 3) the map min-max scaled, coloured with
    `COLORMAP` and blended over the image. A constant or non-finite map leaves the image as it is."""
    if saliency.shape != image.shape[:2]:
        raise ValueError(f"map {saliency.shape} does not fit the image {image.shape[:2]}")
    finite = np.isfinite(saliency)
    if not finite.any() or np.ptp(saliency[finite]) == 0:
        return image
    low, high = saliency[finite].min(), saliency[finite].max()
    scaled = np.where(finite, (saliency - low) / (high - low), 0.0)
    coloured = colormaps[COLORMAP](scaled)[..., :3]
    return (1 - alpha) * image + alpha * coloured


def image_grid_figure(
    panels: Sequence[Sequence[np.ndarray]],
    column_titles: Sequence[str],
    row_titles: Sequence[str] = (),
) -> Figure:
    """Rows x columns of (H, W, 3) images, each `PANEL_INCHES` square, axes hidden."""
    rows, columns = len(panels), max(len(r) for r in panels)
    figure = Figure(figsize=(columns * PANEL_INCHES, rows * PANEL_INCHES), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for r, row in enumerate(panels):
        for c in range(columns):
            axes = grid[r][c]
            axes.set_xticks([])
            axes.set_yticks([])
            if c >= len(row):
                axes.set_axis_off()
                continue
            axes.imshow(np.clip(row[c], 0, 1))
            if r == 0 and c < len(column_titles):
                axes.set_title(column_titles[c], fontsize=10)
            if c == 0 and r < len(row_titles):
                axes.set_ylabel(row_titles[r], fontsize=8)
    return figure
