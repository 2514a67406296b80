"""Insertion and Deletion (Petsiuk et al. 2018, "RISE"), and Ins-Del, batched over images and steps.

Every (image, step) pair is one perturbed image: the pairs of a whole batch are scored in chunks of
`ctx.chunk_size`, so memory is bounded by the chunk size and the result does not depend on it.
"""

from __future__ import annotations

from typing import Literal

import torch

from xaibench.core.batching import ChunkSize, apply_in_chunks
from xaibench.metrics.base import (
    METRICS,
    Metric,
    MetricContext,
    MetricResult,
    ScoreFn,
    fill_rows,
    finite_maps,
)
from xaibench.metrics.protocols import Protocol

Mode = Literal["insertion", "deletion"]


def pixel_ranks(saliency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) finite maps -> rank (B, H*W) int64 and tie fraction (B,).

    rank[b, p] is the position of pixel p in image b's order, most salient first; equal values keep
    the order of their flat pixel index (a stable descending sort). The tie fraction is the share of
    pixels whose value equals another pixel's in the same map. -0.0 is 0.0 (CUDA's sort puts -0.0
    below +0.0, the CPU's ties them; adding +0.0 makes every zero +0.0, so both devices agree).
    """
    flat = saliency.flatten(1) + 0.0
    values, order = flat.sort(dim=1, descending=True, stable=True)
    positions = torch.arange(flat.shape[1], device=flat.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(1, order, positions)
    equal_next = values[:, 1:] == values[:, :-1]
    tied = torch.zeros_like(flat, dtype=torch.bool)
    tied[:, 1:] |= equal_next
    tied[:, :-1] |= equal_next
    return ranks, tied.float().mean(dim=1)


def causal_curves(
    images: torch.Tensor,
    substrate: torch.Tensor,
    ranks: torch.Tensor,
    targets: torch.Tensor,
    pixel_counts: torch.Tensor,
    score_fn: ScoreFn,
    mode: Mode,
    *,
    chunk_size: int | ChunkSize,
) -> torch.Tensor:
    """Scores of the perturbed images: (B, points).

    images, substrate: (B, 3, H, W); ranks: (B, H*W) from `pixel_ranks`; targets: (B,);
    pixel_counts: (points,) pixels changed at each point. For point j of image b the changed
    pixels are those with rank < pixel_counts[j]: deletion puts the substrate there, insertion puts
    the image there on the substrate. A pixel carries all its channels.
    """
    b, _, h, w = images.shape
    points = pixel_counts.shape[0]
    pair_image = torch.arange(b, device=images.device).repeat_interleave(points)
    pair_count = pixel_counts.repeat(b)
    changed_value, kept_value = (substrate, images) if mode == "deletion" else (images, substrate)

    def score_pairs(image: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        changed = (ranks[image] < count[:, None]).view(-1, 1, h, w)
        perturbed = torch.where(changed, changed_value[image], kept_value[image])
        return score_fn(perturbed, targets[image])

    scores = apply_in_chunks(score_pairs, pair_image, pair_count, chunk_size=chunk_size)
    return scores.view(b, points)


class CausalMetric(Metric):
    """Insertion (higher is better) or Deletion (lower is better) AUC under `ctx.protocol`.

    Values: `values[mode]` (B,) the AUC; curves: `curves[mode]` (B, points); flags:
    "nonfinite_map" (the map has NaN or Inf: value and curve are NaN, no pixel order is made);
    diagnostics: "tie_fraction".
    """

    def __init__(self, mode: Mode):
        if mode not in ("insertion", "deletion"):
            raise ValueError(f"mode must be 'insertion' or 'deletion', got {mode!r}")
        self.mode = mode
        self.name = mode
        self.higher_is_better = mode == "insertion"

    def score_batch(self, ctx: MetricContext) -> MetricResult:
        return ctx.shared(("causal", self.mode), lambda: self._evaluate(ctx))

    def forwards(self, protocol: Protocol, n_pixels: int) -> dict[str, int]:
        """One forward per point of the curve."""
        points = protocol.n_steps(n_pixels) + (1 if protocol.include_start else 0)
        return {f"causal_{self.mode}": points}

    @torch.no_grad()
    def _evaluate(self, ctx: MetricContext) -> MetricResult:
        keep, ranks, ties = ctx.shared("pixel_ranks", lambda: ranks_of_finite_maps(ctx))
        images = ctx.images[keep]
        n_pixels = images.shape[-2] * images.shape[-1]
        curves = causal_curves(
            images,
            ctx.protocol.substrate(self.mode, images),
            ranks,
            ctx.targets[keep],
            ctx.protocol.pixel_counts(n_pixels, device=images.device),
            ctx.score_fn,
            self.mode,
            chunk_size=ctx.chunk_size,
        )
        return MetricResult(
            values={self.mode: fill_rows(keep, ctx.protocol.area(curves))},
            curves={self.mode: fill_rows(keep, curves)},
            flags={"nonfinite_map": ~keep},
            diagnostics={"tie_fraction": fill_rows(keep, ties)},
        )


def ranks_of_finite_maps(ctx: MetricContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B,) bool finite maps, then `pixel_ranks` of those maps only."""
    keep = finite_maps(ctx.saliency)
    return keep, *pixel_ranks(ctx.saliency[keep])


class InsDel(Metric):
    """Ins-Del: insertion AUC - deletion AUC per image (higher is better).

    Reuses the insertion and deletion results of the same batch when they were asked for too, and
    carries both curves so they are kept when only ins_del is asked for.
    """

    name = "ins_del"
    higher_is_better = True

    def __init__(self) -> None:
        self.insertion = CausalMetric("insertion")
        self.deletion = CausalMetric("deletion")

    def forwards(self, protocol: Protocol, n_pixels: int) -> dict[str, int]:
        """The insertion and deletion curves' (shared with those metrics)."""
        return {
            **self.insertion.forwards(protocol, n_pixels),
            **self.deletion.forwards(protocol, n_pixels),
        }

    def score_batch(self, ctx: MetricContext) -> MetricResult:
        insertion = self.insertion.score_batch(ctx)
        deletion = self.deletion.score_batch(ctx)
        return MetricResult(
            values={self.name: insertion.values["insertion"] - deletion.values["deletion"]},
            curves={**insertion.curves, **deletion.curves},
            flags=insertion.flags,
            diagnostics=insertion.diagnostics,
        )


METRICS.add("insertion", CausalMetric("insertion"), help="Insertion AUC (higher is better)")
METRICS.add("deletion", CausalMetric("deletion"), help="Deletion AUC (lower is better)")
METRICS.add("ins_del", InsDel(), help="Insertion AUC - Deletion AUC (higher is better)")
