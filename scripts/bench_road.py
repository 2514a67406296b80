"""ROAD's imputation: the batched conjugate gradients (the GPU default) against one sparse LU
solve per image (the CPU default, the ROAD reference code's way), same images and masks, same run.

    python scripts/bench_road.py --images 4 --size 224 --percentages 10,50,90
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from xaibench.core.timing import timed
from xaibench.metrics.road import linear_imputation, neighbour_kernel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--percentages", default="10,50,90")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    images = F.conv2d(
        torch.randn(args.images * 3, 1, args.size, args.size),
        neighbour_kernel(torch.float32, "cpu"),
        padding=1,
    ).view(args.images, 3, args.size, args.size)
    saliency = torch.rand(args.images, 1, args.size // 16, args.size // 16)
    saliency = F.interpolate(saliency, size=(args.size, args.size), mode="bilinear")[:, 0]
    order = saliency.flatten(1).argsort(dim=1, descending=True).argsort(dim=1)
    print(f"{args.images} images {args.size} x {args.size}, MoRF on smooth random maps")
    device = torch.device(args.device)
    images = images.to(device)
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


if __name__ == "__main__":
    main()
