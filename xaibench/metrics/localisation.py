"""Localisation against bounding boxes: the pointing game and the energy-based pointing game.

Boxes come with the context (`MetricContext.boxes`, (B, K, 4) x0, y0, x1, y1 in input pixels of
the class explained, NaN rows as padding). Pixel (row i, column j) has its centre at
(j + 0.5, i + 0.5); it is inside a box when its centre is, and within a tolerance t of the box when
the Euclidean distance from its centre to the box (0 inside) is at most t.

- Pointing game (Zhang et al. 2018, "Top-down neural attention by excitation backprop"): a hit
  when the map's maximum (at input size) lies within `protocol.pointing_tolerance` (15 px) of a
  box of the class. Ties: when several pixels share the maximum, the value is the share of them
  that hit, the expected hit of a uniformly random tie break (0 or 1 for a unique maximum).
  Departure: the tolerance is measured in the model's input pixels, not the original image's.
- Energy-based pointing game (Wang et al. 2020, "Score-CAM"): the share of the positive saliency
  max(s, 0) that lies inside the union of the boxes. Score-CAM's maps are non-negative; for maps
  with negative values only the positive part counts.

An image without a box of its class explained gets NaN and the flag "no_box".
"""

from __future__ import annotations

import torch

from xaibench.core.errors import ConfigError
from xaibench.metrics.base import METRICS, Metric, MetricContext, MetricResult, finite_maps


def near_boxes(boxes: torch.Tensor, size: tuple[int, int], tolerance: float = 0.0) -> torch.Tensor:
    """(B, K, 4) boxes -> (B, H, W) bool: the pixel centre is within `tolerance` of some box.

    NaN boxes contain nothing.
    """
    height, width = size
    cx = torch.arange(width, device=boxes.device, dtype=boxes.dtype) + 0.5
    cy = torch.arange(height, device=boxes.device, dtype=boxes.dtype) + 0.5
    x0, y0, x1, y1 = (boxes[..., i, None] for i in range(4))
    dx = torch.maximum(x0 - cx, cx - x1).clamp(min=0)  # (B, K, W)
    dy = torch.maximum(y0 - cy, cy - y1).clamp(min=0)  # (B, K, H)
    distance_sq = dy[..., :, None] ** 2 + dx[..., None, :] ** 2  # (B, K, H, W), NaN for padding
    return (distance_sq <= tolerance**2).any(dim=1)


def _boxes_and_validity(
    ctx: MetricContext, name: str
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The context's boxes in the maps' dtype, (B,) bool images to score, and the flags
    "no_box" and "nonfinite_map"; ConfigError when the context has no boxes."""
    if ctx.boxes is None:
        raise ConfigError(f"{name} needs bounding boxes; pass `boxes`, a folder of them")
    boxes = ctx.boxes.to(ctx.saliency.dtype)
    has_box = ~torch.isnan(boxes).any(dim=2).all(dim=1)
    finite = finite_maps(ctx.saliency)
    return boxes, finite & has_box, {"no_box": ~has_box, "nonfinite_map": ~finite}


class PointingGame(Metric):
    """Pointing game hit (1 hit, 0 miss, a fraction for tied maxima); higher is better."""

    name = "pointing_game"
    higher_is_better = True
    needs_boxes = True

    @torch.no_grad()
    def score_batch(self, ctx: MetricContext) -> MetricResult:
        boxes, valid, flags = _boxes_and_validity(ctx, self.name)
        saliency = ctx.saliency
        near = near_boxes(boxes, tuple(saliency.shape[-2:]), ctx.protocol.pointing_tolerance)
        maxima = saliency == saliency.flatten(1).amax(dim=1)[:, None, None]
        hits = (maxima & near).flatten(1).sum(dim=1) / maxima.flatten(1).sum(dim=1).clamp(min=1)
        values = hits.to(saliency.dtype).masked_fill(~valid, float("nan"))
        return MetricResult(values={self.name: values}, flags=flags)


class EnergyPointingGame(Metric):
    """Share of the positive saliency inside the boxes of the class, in [0, 1]; higher is better.

    NaN with the flag "no_positive_saliency" for a map with nothing above 0.
    """

    name = "energy_pointing"
    higher_is_better = True
    needs_boxes = True

    @torch.no_grad()
    def score_batch(self, ctx: MetricContext) -> MetricResult:
        boxes, valid, flags = _boxes_and_validity(ctx, self.name)
        positive = ctx.saliency.clamp(min=0)
        inside = near_boxes(boxes, tuple(positive.shape[-2:]))
        total = positive.flatten(1).sum(dim=1)
        energy = (positive * inside).flatten(1).sum(dim=1) / total
        no_positive = ~flags["nonfinite_map"] & (total <= 0)
        values = energy.masked_fill(~valid | no_positive, float("nan"))
        return MetricResult(
            values={self.name: values}, flags={**flags, "no_positive_saliency": no_positive}
        )


METRICS.add(
    "pointing_game",
    PointingGame(),
    help="Pointing game: the map's maximum within 15 px of a box of the class (needs `boxes`)",
)
METRICS.add(
    "energy_pointing",
    EnergyPointingGame(),
    help="Energy-based pointing game: share of positive saliency inside the boxes (needs `boxes`)",
)
