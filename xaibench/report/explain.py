"""The figure of one image explained by several methods (`xaibench explain`): the image, its top
classes and one overlay per method; with T-Grad's terms, their overlays and weights."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from xaibench.methods.tgrad import TGradTerms
from xaibench.metrics.base import saliency_at_input_size
from xaibench.report.plots import PANEL_INCHES, overlay
from xaibench.results.explanation import ImageExplanation


def figure_layout(methods: int, terms: int = 0) -> tuple[int, int]:
    """(rows, columns) of panels: the image, the top classes and one overlay per method in the
    first row; with T-Grad terms, rows of term overlays and one row for their weights."""
    columns = 2 + methods
    rows = 1 + (math.ceil(terms / columns) + 1 if terms else 0)
    return rows, columns


def explanation_figure(result: ImageExplanation) -> Figure:
    """The figure of `explain_image`'s result, `PANEL_INCHES` per panel (`figure_layout`)."""
    terms = result.terms
    rows, columns = figure_layout(len(result.maps), len(terms.names) if terms else 0)
    figure = Figure(figsize=(columns * PANEL_INCHES, rows * PANEL_INCHES), layout="constrained")
    grid = figure.add_gridspec(rows, columns)
    index, name, probability = result.target
    figure.suptitle(f"maps of {name} ({index}), p = {probability:.3f}", fontsize=10)
    _image_panel(figure.add_subplot(grid[0, 0]), result.image, "input")
    _top_classes_panel(figure.add_subplot(grid[0, 1]), result.top)
    for column, (name, saliency) in enumerate(result.maps.items(), start=2):
        _image_panel(figure.add_subplot(grid[0, column]), overlay(result.image, saliency), name)
    if terms is not None:
        _terms_panels(figure, grid, result.image, terms, columns)
    return figure


def _image_panel(axes, image: np.ndarray, title: str, fontsize: float = 10) -> None:
    axes.imshow(np.clip(image, 0, 1))
    axes.set_title(title, fontsize=fontsize)
    axes.set_xticks([])
    axes.set_yticks([])


def _top_classes_panel(axes, top: list[tuple[int, str, float]]) -> None:
    """Horizontal bars of the top classes' probabilities, each labelled above its bar."""
    positions = np.arange(len(top))[::-1] * 1.0
    values = [p for *_, p in top]
    axes.barh(positions, values, height=0.45, color="#4c78a8")
    for y, (index, name, value) in zip(positions, top, strict=True):
        axes.text(0.0, y + 0.28, f"{name} ({index})  {value:.3f}", fontsize=7, va="bottom")
    axes.set_xlim(0, 1)
    axes.set_ylim(-0.5, len(top) - 0.2)
    axes.set_yticks([])
    axes.set_title(f"top-{len(top)} classes", fontsize=10)
    axes.tick_params(axis="x", labelsize=7)
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)


def _terms_panels(figure: Figure, grid, image: np.ndarray, terms: TGradTerms, columns: int) -> None:
    """Each term's map (at the input size, over the image) titled with its weight, then a bar
    chart of all the weights."""
    size = image.shape[:2]
    weights = terms.weights[0].detach().float().cpu().numpy()
    for index, (name, term_map) in enumerate(zip(terms.names, terms.maps, strict=True)):
        row, column = divmod(index, columns)
        resized = saliency_at_input_size(term_map[:1].detach(), size)[0].cpu().numpy()
        _image_panel(
            figure.add_subplot(grid[1 + row, column]),
            overlay(image, resized),
            f"{name}\nw = {weights[index]:.3f}",
            fontsize=7,
        )
    axes = figure.add_subplot(grid[-1, :])
    axes.bar(range(len(weights)), weights, color=np.where(weights >= 0, "#4c78a8", "#e45756"))
    axes.set_xticks(range(len(weights)), terms.names, rotation=90, fontsize=6)
    axes.set_ylabel("weight", fontsize=8)
    axes.set_title(
        f"T-Grad term weights (share of the score); sum = {weights.sum():.3f}", fontsize=9
    )
    axes.axhline(0, color="black", lw=0.6)
