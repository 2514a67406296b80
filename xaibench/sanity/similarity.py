"""Batched similarity of two sets of maps: Spearman rank correlation and SSIM, in torch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from xaibench.metrics.confidence import min_max_normalise

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """(B, n) -> (B, n) float64 ranks 1..n per row, tied values sharing their average rank."""
    n = values.shape[1]
    ordered, order = values.sort(dim=1, stable=True)
    position = torch.arange(n, device=values.device).expand_as(order)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.where(starts, position, 0).cummax(dim=1).values
    last = torch.where(ends, position, n).flip(1).cummin(dim=1).values.flip(1)
    average = (first + last).double() / 2 + 1
    return torch.empty_like(average).scatter_(1, order, average)


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / ((a * a).sum(dim=1) * (b * b).sum(dim=1)).sqrt()


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, ...) x2 -> (B,) float64 Spearman rank correlation of each pair of maps.

    Ties get average ranks (as scipy.stats.spearmanr). A pair where a map is constant has no
    correlation (NaN), except two equal maps, which get 1: a map that does not change at all is
    what the sanity check must flag.
    """
    a, b = a.flatten(1), b.flatten(1)
    correlation = _pearson(average_ranks(a), average_ranks(b))
    return torch.where((a == b).all(dim=1), 1.0, correlation)


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, H, W) maps in [0, 1] x2 -> (B,) float64 mean SSIM, H, W >= 7.

    The definition of skimage.metrics.structural_similarity with data_range=1 and its defaults:
    a 7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample covariances (normalised by 48 / 49), the
    mean over the windows that fit inside the map.
    """
    a, b = a.double()[:, None], b.double()[:, None]

    def local_mean(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, SSIM_WINDOW, stride=1)

    mean_a, mean_b = local_mean(a), local_mean(b)
    norm = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    var_a = norm * (local_mean(a * a) - mean_a**2)
    var_b = norm * (local_mean(b * b) - mean_b**2)
    covariance = norm * (local_mean(a * b) - mean_a * mean_b)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    index = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
        (mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2)
    )
    return index.flatten(1).mean(dim=1)


def unit_range(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> min-max scaled per map to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(1)
    constant = (flat.amax(dim=1) == flat.amin(dim=1))[:, None, None]
    return torch.where(constant, 0.0, min_max_normalise(maps))


def map_similarity(original: torch.Tensor, other: torch.Tensor) -> dict[str, torch.Tensor]:
    """(B, H, W) x2 -> {"spearman", "spearman_abs", "ssim"}: (B,) float64 each.

    SSIM compares the maps scaled to [0, 1] (`unit_range`).
    """
    return {
        "spearman": spearman(original, other),
        "spearman_abs": spearman(original.abs(), other.abs()),
        "ssim": ssim(unit_range(original), unit_range(other)),
    }
