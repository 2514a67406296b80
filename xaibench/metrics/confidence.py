"""Average Drop % and % Increase in Confidence (Chattopadhyay et al. 2018, "Grad-CAM++").

xaibench's definition, per image with class c, score p_c and clean image x (normalised space):
    map = min-max scaled saliency at input size, in [0, 1]
    E   = x * map (element-wise, all 3 channels);  Y = p_c(x),  O = p_c(E)
    drop = max(0, Y - O) / Y in [0, 1];  increase = 1 if O > Y else 0
Summaries report 100 * mean(drop) ("Average Drop %", lower is better) and 100 * mean(increase)
("% Increase in Confidence", higher is better); per-image values stay fractions.

Known variants: pytorch-grad-cam's drop is absolute, max(0, Y - O) without dividing by Y, and
scores logits by default; torchcam reports fractions instead of percentages. Their numbers are not
comparable with these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from xaibench.core.batching import apply_in_chunks
from xaibench.metrics.base import (
    METRICS,
    Metric,
    MetricContext,
    MetricResult,
    fill_rows,
    finite_maps,
)
from xaibench.metrics.protocols import Protocol


@dataclass
class ExplanationScores:
    """keep: (B,) bool, images with a usable map; scores: (V,) O = p_c(E) of the kept images;
    flags: (B,) bool each, "nonfinite_map" and "constant_map" (a map with no min-max scaling)."""

    keep: torch.Tensor
    scores: torch.Tensor
    flags: dict[str, torch.Tensor]


def min_max_normalise(saliency: torch.Tensor) -> torch.Tensor:
    """(B, H, W) non-constant finite maps -> (B, H, W) scaled per image to [0, 1]."""
    flat = saliency.flatten(1)
    low = flat.amin(dim=1)[:, None, None]
    high = flat.amax(dim=1)[:, None, None]
    return (saliency - low) / (high - low)


@torch.no_grad()
def explanation_scores(ctx: MetricContext) -> ExplanationScores:
    """Score E = x * map for every image whose map is finite and not constant."""
    finite = finite_maps(ctx.saliency)
    flat = ctx.saliency.flatten(1)
    constant = finite & (flat.amax(dim=1) == flat.amin(dim=1))
    keep = finite & ~constant
    explained = ctx.images[keep] * min_max_normalise(ctx.saliency[keep])[:, None]
    scores = apply_in_chunks(ctx.score_fn, explained, ctx.targets[keep], chunk_size=ctx.chunk_size)
    return ExplanationScores(keep, scores, {"nonfinite_map": ~finite, "constant_map": constant})


def _shared_scores(ctx: MetricContext) -> ExplanationScores:
    return ctx.shared("explanation_scores", lambda: explanation_scores(ctx))


class ConfidenceMetric(Metric):
    """A metric of the score of the explanation-masked image, shared by Average Drop and
    Increase in Confidence: one forward per image."""

    def forwards(self, protocol: Protocol, n_pixels: int) -> dict[str, int]:
        return {"explanation_scores": 1}


class AverageDrop(ConfidenceMetric):
    """Average Drop %: per image drop = max(0, Y - O) / Y in [0, 1]; summary 100 * mean (lower is
    better). NaN with a flag for a non-finite or constant map, and for a clean score Y <= 0 (only
    possible with logits), where the relative drop is undefined."""

    name = "avg_drop"
    higher_is_better = False
    summary_scale = 100.0

    def score_batch(self, ctx: MetricContext) -> MetricResult:
        shared = _shared_scores(ctx)
        clean = ctx.clean_scores[shared.keep]
        drop = (clean - shared.scores).clamp(min=0) / clean
        nonpositive = ctx.clean_scores <= 0
        values = fill_rows(shared.keep, drop).masked_fill(nonpositive, float("nan"))
        return MetricResult(
            values={self.name: values},
            flags={**shared.flags, "nonpositive_clean_score": nonpositive},
        )


class IncreaseInConfidence(ConfidenceMetric):
    """% Increase in Confidence: per image increase = 1 if O > Y else 0; summary 100 * mean (higher
    is better). NaN with a flag for a non-finite or constant map."""

    name = "increase"
    higher_is_better = True
    summary_scale = 100.0

    def score_batch(self, ctx: MetricContext) -> MetricResult:
        shared = _shared_scores(ctx)
        increase = (shared.scores > ctx.clean_scores[shared.keep]).to(ctx.clean_scores.dtype)
        values = fill_rows(shared.keep, increase)
        return MetricResult(values={self.name: values}, flags=shared.flags)


METRICS.add("avg_drop", AverageDrop(), help="Average Drop % (lower is better)")
METRICS.add("increase", IncreaseInConfidence(), help="% Increase in Confidence (higher is better)")
