"""ROAD's imputation, same images and masks, same run:
- per percentage, the batched conjugate gradients (the GPU default) against one sparse LU solve
  per image (the CPU default, the ROAD reference code's way);
- on one chunk as ROAD forms them (`--chunk` (image, order, percentage) pairs, image-major, every
  order and percentage of the protocol in turn), the conjugate gradients whose converged planes
  freeze and drop out (xaibench's) against the same iteration run on every plane until the slowest
  converges (the reference below): plane-iterations (planes x iterations, counted at the matrix
  products) and wall time, as reference / xaibench ratios.

    python scripts/bench_road.py --images 4 --size 224 --percentages 10,50,90 --chunk 16
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import xaibench.metrics.road as road
from xaibench.core.runtime import tune_allocator
from xaibench.core.timing import timed
from xaibench.metrics.road import CHECK_EVERY, ROAD_TOLERANCE, linear_imputation, neighbour_kernel

ROAD_PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


class CountingConv:
    """F.conv2d that adds up the planes (batch entries) it is given."""

    def __init__(self) -> None:
        self.planes = 0

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self.planes += len(x)
        return F.conv2d(x, *args, **kwargs)


def all_planes_imputation(
    images: torch.Tensor, removed: torch.Tensor, conv: CountingConv, max_iterations: int = 2000
) -> torch.Tensor:
    """The reference: `linear_imputation(solver="cg")` with every plane of the chunk iterated until
    all meet `ROAD_TOLERANCE` (checked every `CHECK_EVERY` iterations)."""
    n, c, h, w = images.shape
    planes = images.reshape(n * c, 1, h, w)
    mask = removed[:, None].expand(n, c, h, w).reshape(n * c, 1, h, w).to(images.dtype)
    kernel = neighbour_kernel(images.dtype, images.device)
    diagonal = conv(torch.ones_like(planes[:1]), kernel, padding=1)
    b = mask * conv(planes * (1 - mask), kernel, padding=1)
    tiny = torch.finfo(b.dtype).tiny

    def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(dim=(1, 2, 3), keepdim=True)

    x, r = torch.zeros_like(b), b.clone()
    z = r / diagonal
    p = z.clone()
    rz = dot(r, z)
    target = ROAD_TOLERANCE * dot(b, b).sqrt()
    for iteration in range(max_iterations):
        ap = mask * (diagonal * p - conv(p, kernel, padding=1))
        pap = dot(p, ap)
        alpha = torch.where(pap > 0, rz / pap.clamp(min=tiny), 0)
        x += alpha * p
        r -= alpha * ap
        if iteration % CHECK_EVERY == CHECK_EVERY - 1 and bool((dot(r, r).sqrt() <= target).all()):
            break
        z = r / diagonal
        rz_next = dot(r, z)
        beta = torch.where(rz > 0, rz_next / rz.clamp(min=tiny), 0)
        p = z + beta * p
        rz = rz_next
    return (planes * (1 - mask) + x * mask).view(n, c, h, w)


def smooth_images(n: int, size: int) -> torch.Tensor:
    """(n, 3, size, size) random images smoothed once by ROAD's neighbour kernel."""
    noise = torch.randn(n * 3, 1, size, size)
    return F.conv2d(noise, neighbour_kernel(torch.float32, "cpu"), padding=1).view(n, 3, size, size)


def pixel_order(n: int, size: int) -> torch.Tensor:
    """(n, size * size) rank of each pixel in smooth random maps, most relevant first."""
    saliency = torch.rand(n, 1, size // 16, size // 16)
    saliency = F.interpolate(saliency, size=(size, size), mode="bilinear")[:, 0]
    return saliency.flatten(1).argsort(dim=1, descending=True).argsort(dim=1)


def per_percentage(args: argparse.Namespace, device: torch.device) -> None:
    images = smooth_images(args.images, args.size).to(device)
    order = pixel_order(args.images, args.size)
    print(f"{args.images} images {args.size} x {args.size}, MoRF on smooth random maps")
    print(f"{'removed':>8} {'cg s':>8} {'direct s':>9} {'direct/cg':>9} {'max diff':>9}")
    for p in [float(p) for p in args.percentages.split(",")]:
        k = int(args.size * args.size * p / 100)
        removed = (order < k).view(args.images, args.size, args.size).to(device)
        results, seconds = {}, {}
        for solver in ("cg", "direct"):
            results[solver], seconds[solver] = timed(
                device, linear_imputation, images, removed, solver=solver
            )
        diff = (results["cg"] - results["direct"]).abs().max().item()
        ratio = seconds["direct"] / seconds["cg"]
        print(
            f"{p:>7g}% {seconds['cg']:>8.2f} {seconds['direct']:>9.2f} {ratio:>9.2f} {diff:>9.1e}"
        )


def road_chunk(pairs: int, size: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(pairs, 3, size, size) images, (pairs, size, size) removed pixels and labels of ROAD's
    first `pairs` (image, order, percentage) pairs: MoRF at every percentage, then LeRF, then the
    next image."""
    points = len(ROAD_PERCENTAGES)
    n_images = -(-pairs // (2 * points))
    images, order = smooth_images(n_images, size), pixel_order(n_images, size)
    chunk, masks, labels = [], [], []
    for pair in range(pairs):
        image, code = divmod(pair, 2 * points)
        lerf, point = divmod(code, points)
        k = size * size * ROAD_PERCENTAGES[point] // 100
        ranks = order[image] if not lerf else size * size - 1 - order[image]
        chunk.append(images[image])
        masks.append((ranks < k).view(size, size))
        labels.append(f"{'lerf' if lerf else 'morf'} {ROAD_PERCENTAGES[point]}%")
    return torch.stack(chunk), torch.stack(masks), labels


def mixed_chunk(args: argparse.Namespace, device: torch.device) -> None:
    images, removed, labels = road_chunk(args.chunk, args.size)
    images, removed = images.to(device), removed.to(device)
    print(
        f"\none ROAD chunk: {args.chunk} pairs x 3 channels, {args.size} x {args.size} "
        f"({', '.join(labels)})"
    )
    runs = {"all planes (reference)": all_planes_imputation, "freezing (xaibench)": None}
    counts, times, results = {}, {}, {}
    for repeat in range(args.repeats):
        for name in list(runs) if repeat % 2 == 0 else list(reversed(runs)):
            conv = CountingConv()
            if runs[name] is None:
                real, road.F = road.F, SimpleNamespace(conv2d=conv)
                try:
                    results[name], seconds = timed(
                        device, linear_imputation, images, removed, solver="cg"
                    )
                finally:
                    road.F = real
            else:
                results[name], seconds = timed(device, runs[name], images, removed, conv)
            counts[name] = conv.planes - 3 * args.chunk - 1  # less the right-hand side, diagonal
            times.setdefault(name, []).append(seconds)
    reference, ours = runs
    direct = linear_imputation(images.cpu(), removed.cpu(), solver="direct").to(device)
    for name in runs:
        diff = (results[name] - direct).abs().max().item()
        print(
            f"  {name:<24} {counts[name]:>8} plane-iterations  {min(times[name]):>7.2f} s "
            f"(best of {args.repeats})  max diff to the direct solve {diff:.1e}"
        )
    ratios = sorted(r / o for r, o in zip(times[reference], times[ours], strict=True))
    print(
        f"  reference / xaibench: plane-iterations {counts[reference] / counts[ours]:.2f}, "
        f"wall time {ratios[len(ratios) // 2]:.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4, help="per-percentage table: 0 skips it")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--percentages", default="10,50,90")
    parser.add_argument("--chunk", type=int, default=16, help="pairs in the chunk: 0 skips it")
    parser.add_argument("--repeats", type=int, default=3, help="chunk timings per side")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    tune_allocator()  # as the CLI does
    torch.manual_seed(0)
    device = torch.device(args.device)
    if args.images:
        per_percentage(args, device)
    if args.chunk:
        mixed_chunk(args, device)


if __name__ == "__main__":
    main()
