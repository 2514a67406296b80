"""ROAD (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy for Attribution
Methods"): remove and debias with noisy linear imputation, MoRF and LeRF.

For a percentage p, the k = floor(HW * p / 100) most relevant pixels (MoRF) or least relevant
pixels (LeRF) are removed and imputed: every removed pixel equals the weighted average of its 8
neighbours (direct neighbours weight 1/6, diagonal ones 1/12, renormalised over the neighbours
inside the image), removed neighbours being unknowns too. That is one sparse linear system per
image and channel,

    d_i x_i - sum_{j removed, j ~ i} w_ij x_j = sum_{j kept, j ~ i} w_ij v_j,

with d_i the sum of the weights of i's neighbours inside the image. It is symmetric positive
definite whenever a pixel is kept. On a GPU it is solved for every image, percentage and channel of
a chunk at once by conjugate gradients preconditioned with d (the weighted sums are one 3 x 3
convolution), each plane to a relative residual of `ROAD_TOLERANCE`, after which it drops out of
the iteration; on the CPU a sparse LU per image (all channels at once) is faster
(scripts/bench_road.py) and is the default there. Gaussian noise of std
`protocol.road_noise` (0.01, in [0, 1] pixel units as in the reference code) is added to the
imputed pixels; the model's score of the class is measured on the result.

Departures from the reference code: ties in the map are broken by the stable pixel order shared
with insertion and deletion (the reference adds 1e-4 random noise to the map); the noise is a
counter-based function of (seed, image, percentage, order, pixel), so results do not depend on the
batch or chunk size; the imputation runs in the normalised input space, with the noise scaled by
1 / std per channel, which is the same as imputing in pixel space since the imputation is affine
per channel.

Values: "road_morf" (lower is better) and "road_lerf" (higher is better), the mean of the curve
over the protocol's P percentages (an AUC-like summary; docs/metrics); curves of the same names
(B, P); diagnostics "road_morf_P" and "road_lerf_P" for each percentage P.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
import torch.nn.functional as F

from xaibench.core.batching import apply_in_chunks
from xaibench.core.errors import ConfigError
from xaibench.methods.baselines import image_fingerprints, seeded_uniform
from xaibench.metrics.base import METRICS, Metric, MetricContext, MetricResult, fill_rows
from xaibench.metrics.causal import ranks_of_finite_maps
from xaibench.metrics.protocols import Protocol

log = logging.getLogger(__name__)

Order = Literal["morf", "lerf"]
ORDERS: tuple[Order, ...] = ("morf", "lerf")
ROAD_TOLERANCE = 1e-5
"""Relative residual ||b - A x|| / ||b|| at which the conjugate gradients stop."""
MAX_ITERATIONS = 2000
CHECK_EVERY = 10
"""Iterations between convergence checks (each check synchronises with the device)."""
SOLVERS = ("cg", "direct")
DEFAULT_SOLVER = {"cpu": "direct", "cuda": "cg"}
"""Per device type: batched conjugate gradients on the GPU, a sparse LU per image on the CPU."""
OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def neighbour_kernel(dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """(1, 1, 3, 3) ROAD's neighbour weights: 1/6 for direct neighbours, 1/12 diagonal, 0 centre.

    Built by fills on the device: no host-to-device copy.
    """
    kernel = torch.ones(3, 3, dtype=dtype, device=device)
    kernel[1, :] = 2
    kernel[:, 1] = 2
    kernel[1, 1] = 0
    return (kernel / 12).view(1, 1, 3, 3)


def linear_imputation(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    solver: str | None = None,
    tolerance: float = ROAD_TOLERANCE,
    max_iterations: int = MAX_ITERATIONS,
) -> torch.Tensor:
    """(N, C, H, W) images, (N, H, W) bool removed pixels -> (N, C, H, W) imputed (no noise).

    Kept pixels are returned unchanged; removed ones solve ROAD's linear system (module doc), by
    `solver` "cg" (batched conjugate gradients, `_conjugate_gradients`: every image and channel
    to a relative residual of `tolerance`) or "direct" (sparse LU per image); None picks
    `DEFAULT_SOLVER` for the device. An image with every pixel removed has no solution: its
    removed pixels come back as 0.
    """
    solver = solver or DEFAULT_SOLVER.get(images.device.type, "cg")
    if solver == "direct":
        return _direct_imputation(images, removed)
    if solver != "cg":
        raise ConfigError(f"ROAD solver {solver!r}: use one of {', '.join(SOLVERS)}")
    n, c, h, w = images.shape
    planes = images.reshape(n * c, 1, h, w)
    mask = removed[:, None].expand(n, c, h, w).reshape(n * c, 1, h, w).to(images.dtype)
    kernel = neighbour_kernel(images.dtype, images.device)
    b = mask * F.conv2d(planes * (1 - mask), kernel, padding=1)
    x = _conjugate_gradients(b, mask, kernel, tolerance, max_iterations)
    return (planes * (1 - mask) + x * mask).view(n, c, h, w)


def _conjugate_gradients(
    b: torch.Tensor,
    mask: torch.Tensor,
    kernel: torch.Tensor,
    tolerance: float,
    max_iterations: int,
) -> torch.Tensor:
    """(P, 1, H, W) right-hand sides and 0/1 masks of the unknowns -> (P, 1, H, W) solutions of
    ROAD's systems, by conjugate gradients preconditioned with the diagonal, all planes at once.

    Every `CHECK_EVERY` iterations and after the last (one synchronisation each), the planes whose
    relative residual ||b - A x|| / ||b|| (as the iteration updates it) is at most `tolerance`
    freeze: a plane's solution is its iterate at the first check where it meets `tolerance`, and
    the iteration goes on with the other planes' tensors only. Every plane thus meets `tolerance`
    (unless `max_iterations` runs out first: one warning then says how many do not) and its
    solution does not depend on the planes solved with it beyond float rounding.
    """
    diagonal = F.conv2d(torch.ones_like(b[:1]), kernel, padding=1)  # in-image weight sums
    tiny = torch.finfo(b.dtype).tiny
    solution = torch.zeros_like(b)
    active = torch.arange(len(b), device=b.device)
    norm_b = _dot(b, b).sqrt()
    x = torch.zeros_like(b)
    r = b.clone()
    z = r / diagonal
    p = z.clone()
    rz = _dot(r, z)
    for iteration in range(max_iterations):
        ap = mask * (diagonal * p - F.conv2d(p, kernel, padding=1))
        pap = _dot(p, ap)
        alpha = torch.where(pap > 0, rz / pap.clamp(min=tiny), 0)
        x += alpha * p
        r -= alpha * ap
        if iteration % CHECK_EVERY == CHECK_EVERY - 1 or iteration == max_iterations - 1:
            going = (_dot(r, r).sqrt() > tolerance * norm_b).view(-1).nonzero().squeeze(1)
            if len(going) < len(active):
                solution[active] = x
                if not len(going):
                    return solution
                active, x, r, p, rz, mask, norm_b = (
                    t[going] for t in (active, x, r, p, rz, mask, norm_b)
                )
        z = r / diagonal
        rz_next = _dot(r, z)
        beta = torch.where(rz > 0, rz_next / rz.clamp(min=tiny), 0)
        p = z + beta * p
        rz = rz_next
    solution[active] = x
    worst = (_dot(r, r).sqrt() / norm_b.clamp(min=1e-30)).max().item()
    log.warning(
        "ROAD imputation stopped after %d iterations with %d of %d planes short of the tolerance, "
        "at relative residuals up to %.2g",
        max_iterations,
        len(active),
        len(b),
        worst,
    )
    return solution


def _direct_imputation(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """`linear_imputation` by one sparse LU solve per image, all channels as right-hand sides."""
    out = images.detach().double().cpu().numpy().copy()
    masks = removed.cpu().numpy()
    for image, mask in zip(out, masks, strict=True):
        unknown = np.flatnonzero(mask.ravel())
        flat = image.reshape(image.shape[0], -1)
        if len(unknown) == len(flat[0]):
            flat[:] = 0.0
        elif len(unknown):
            matrix, to_rhs = _sparse_system(mask, unknown)
            solution = scipy.sparse.linalg.spsolve(matrix, np.asarray(to_rhs @ flat.T))
            flat[:, unknown] = solution.reshape(len(unknown), -1).T
    return torch.from_numpy(out).to(device=images.device, dtype=images.dtype)


def _sparse_system(
    mask: np.ndarray, unknown: np.ndarray
) -> tuple[scipy.sparse.csc_matrix, scipy.sparse.csr_matrix]:
    """ROAD's system for one (H, W) mask: the (n, n) matrix over the `unknown` flat pixels and
    the (n, HW) map from pixel values to the right-hand side (weights of kept neighbours)."""
    h, w = mask.shape
    variable = np.full(h * w, -1)
    variable[unknown] = np.arange(len(unknown))
    y, x = np.divmod(unknown, w)
    diagonal = np.zeros(len(unknown))
    entries: list[tuple[np.ndarray, np.ndarray, float]] = []
    right: list[tuple[np.ndarray, np.ndarray, float]] = []
    for dy, dx in OFFSETS:
        weight = 1 / 6 if dy == 0 or dx == 0 else 1 / 12
        ny, nx = y + dy, x + dx
        inside = np.flatnonzero((ny >= 0) & (ny < h) & (nx >= 0) & (nx < w))
        diagonal[inside] += weight
        neighbour = ny[inside] * w + nx[inside]
        is_unknown = variable[neighbour] >= 0
        entries.append((inside[is_unknown], variable[neighbour[is_unknown]], -weight))
        right.append((inside[~is_unknown], neighbour[~is_unknown], weight))

    def assemble(parts, shape, matrix_type):
        rows = np.concatenate([r for r, _, _ in parts])
        cols = np.concatenate([c for _, c, _ in parts])
        values = np.concatenate([np.full(len(r), v) for r, _, v in parts])
        return matrix_type((values, (rows, cols)), shape=shape)

    n = len(unknown)
    matrix = assemble(entries, (n, n), scipy.sparse.csc_matrix)
    matrix = matrix + scipy.sparse.diags(diagonal, format="csc")
    return matrix, assemble(right, (n, h * w), scipy.sparse.csr_matrix)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, 1, H, W) x2 -> (P, 1, 1, 1) per-plane inner products."""
    return (a * b).sum(dim=(1, 2, 3), keepdim=True)


def gaussian_noise(keys: torch.Tensor, seed: int, shape: tuple[int, int, int]) -> torch.Tensor:
    """keys (N,) int64 -> (N, *shape) standard normal, a function of (seed, key, element) only.

    Box-Muller on two counter-based uniform streams (`seeded_uniform`).
    """
    c, h, w = shape
    u1 = seeded_uniform(keys, 2 * seed, (c * h, w))
    u2 = seeded_uniform(keys, 2 * seed + 1, (c * h, w))
    normal = (-2 * torch.log1p(-u1)).sqrt() * torch.cos(2 * math.pi * u2)
    return normal.view(-1, c, h, w)


def removed_pixels(
    ranks: torch.Tensor, counts: torch.Tensor, morf: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """ranks (N, HW), counts (N,), morf (N,) bool -> (N, H, W) bool pixels to remove.

    MoRF removes the `count` first pixels of the order, LeRF the `count` last.
    """
    n_pixels = ranks.shape[1]
    first = ranks < counts[:, None]
    last = ranks >= (n_pixels - counts)[:, None]
    return torch.where(morf[:, None], first, last).view(-1, *size)


class RoadMetric(Metric):
    """ROAD MoRF (lower is better) or LeRF (higher is better) under `ctx.protocol`'s percentages.

    Both orders are computed together in one pass over the batch, shared through the context.
    Its chunks, which also hold the imputation's systems, have a chunk size of their own.
    """

    chunks = "road"

    def __init__(self, order: Order):
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        self.order = order
        self.name = f"road_{order}"
        self.higher_is_better = order == "lerf"

    def forwards(self, protocol: Protocol, n_pixels: int) -> dict[str, int]:
        """One forward per percentage and order: both orders are computed together."""
        return {"road": 2 * len(protocol.road_percentages)}

    def score_batch(self, ctx: MetricContext) -> MetricResult:
        both = ctx.shared("road", lambda: road_result(ctx))
        mine = [k for k in both.diagnostics if k.startswith(f"{self.name}_")]
        return MetricResult(
            values={self.name: both.values[self.name]},
            curves={self.name: both.curves[self.name]},
            flags=both.flags,
            diagnostics={k: both.diagnostics[k] for k in mine},
        )


@torch.no_grad()
def road_result(ctx: MetricContext) -> MetricResult:
    """MoRF and LeRF curves and values of every image (module doc)."""
    keep, ranks, _ = ctx.shared("pixel_ranks", lambda: ranks_of_finite_maps(ctx))
    images, targets = ctx.images[keep], ctx.targets[keep]
    v, c, h, w = images.shape
    percentages = torch.tensor(ctx.protocol.road_percentages, dtype=torch.float64)
    counts = (percentages * (h * w) / 100).floor().long().to(images.device)
    points = len(percentages)
    # One pair per (image, order, percentage), image-major.
    pair_image = torch.arange(v, device=images.device).repeat_interleave(2 * points)
    pair_morf = torch.arange(2, device=images.device).repeat_interleave(points).repeat(v) == 0
    pair_count = counts.repeat(2 * v)
    pair_code = torch.arange(2 * points, device=images.device).repeat(v)
    keys = (image_fingerprints(images)[pair_image] * (2 * points) + pair_code) % (2**31 - 1)
    std = torch.as_tensor(
        ctx.pixel_std if ctx.pixel_std is not None else (1.0,) * c,
        dtype=images.dtype,
        device=images.device,
    ).view(1, c, 1, 1)
    noise_scale = ctx.protocol.road_noise / std

    def score_pairs(
        image: torch.Tensor, morf: torch.Tensor, count: torch.Tensor, key: torch.Tensor
    ) -> torch.Tensor:
        removed = removed_pixels(ranks[image], count, morf, (h, w))
        imputed = linear_imputation(images[image], removed)
        noise = gaussian_noise(key, ctx.protocol.road_seed, (c, h, w)) * noise_scale
        return ctx.score_fn(imputed + noise * removed[:, None], targets[image])

    scores = apply_in_chunks(
        score_pairs, pair_image, pair_morf, pair_count, keys, chunk_size=ctx.chunk_size
    )
    curves = scores.view(v, 2, points)
    values, all_curves, diagnostics = {}, {}, {}
    for index, order in enumerate(ORDERS):
        name = f"road_{order}"
        all_curves[name] = fill_rows(keep, curves[:, index])
        values[name] = fill_rows(keep, curves[:, index].mean(dim=1))
        for point, percentage in enumerate(ctx.protocol.road_percentages):
            diagnostics[f"{name}_{percentage:g}"] = all_curves[name][:, point]
    return MetricResult(
        values=values, curves=all_curves, flags={"nonfinite_map": ~keep}, diagnostics=diagnostics
    )


METRICS.add("road_morf", RoadMetric("morf"), help="ROAD, most relevant first (lower is better)")
METRICS.add("road_lerf", RoadMetric("lerf"), help="ROAD, least relevant first (higher is better)")
