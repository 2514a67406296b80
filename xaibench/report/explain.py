"""One image explained by several methods: the picture `xaibench explain` draws.

The image goes through the protocol's preprocessing, the model gives the top classes, and each
method explains the batch of that one image for the top-1 class; CAM methods on the same layer
share one forward and backward, as in `generate` (`shared_pass_groups`). With `tgrad_layers`,
T-Grad's per-term maps and weights (`TGrad.last_terms`) are drawn too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import read_image
from xaibench.errors import ConfigError
from xaibench.generate import explain_group, shared_pass_groups
from xaibench.methods import METHODS
from xaibench.methods.base import Explanation
from xaibench.methods.tgrad import TGradTerms
from xaibench.metrics.base import saliency_at_input_size
from xaibench.models.factory import LoadedModel
from xaibench.models.preprocess import protocol_preprocess
from xaibench.report.plots import PANEL_INCHES, overlay
from xaibench.runtime import prepare_model

TOP_CLASSES = 5


@dataclass
class ImageExplanation:
    """image: (H, W, 3) in [0, 1] as the model saw it; top: (class index, name, probability)
    best first; maps: method -> (H, W) at input size; terms: T-Grad's terms when asked for."""

    image: np.ndarray
    top: list[tuple[int, str, float]]
    maps: dict[str, np.ndarray]
    terms: TGradTerms | None = None


def explain_image(
    path: Path,
    loaded: LoadedModel,
    methods: Sequence[str],
    *,
    device: torch.device,
    protocol: str = "polycam",
    method_params: Mapping[str, dict] | None = None,
    tgrad_layers: bool = False,
) -> ImageExplanation:
    """Explain the model's top-1 class on the image at `path` with every method in `methods`."""
    if not methods:
        raise ConfigError("give at least one method with --saliency")
    if tgrad_layers and "tgrad" not in methods:
        raise ConfigError("--tgrad-layers shows T-Grad's terms: add tgrad to --saliency")
    preprocess = protocol_preprocess(protocol, loaded.mean, loaded.std, loaded.input_size)
    batch = preprocess(read_image(Path(path), "give a JPEG or PNG file"))[None].to(device)
    model = prepare_model(loaded.model, device).eval()
    with torch.inference_mode():
        probabilities = model(batch).float().softmax(dim=1)[0]
    best = probabilities.topk(min(TOP_CLASSES, probabilities.numel()))
    classes = imagenet_classes()
    top_classes = [
        (int(i), classes.short_name(int(i)), float(p))
        for p, i in zip(best.values.cpu(), best.indices.cpu(), strict=True)
    ]
    target = best.indices[:1]
    params = method_params or {}
    built = [METHODS.get(name)(model, **params.get(name, {})) for name in methods]
    explanations: list[Explanation | None] = [None] * len(built)
    for group in shared_pass_groups(built):
        shared = explain_group([built[i] for i in group], batch, target)
        for position, explanation in zip(group, shared, strict=True):
            explanations[position] = explanation
    size = tuple(batch.shape[-2:])
    maps = {
        name: saliency_at_input_size(explanation.maps.detach(), size)[0].cpu().numpy()
        for name, explanation in zip(methods, explanations, strict=True)
    }
    terms = built[list(methods).index("tgrad")].last_terms if tgrad_layers else None
    image = preprocess.unnormalise(batch[0]).cpu().numpy()
    return ImageExplanation(image, top_classes, maps, terms)


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
