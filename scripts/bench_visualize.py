"""Feature visualisation and MC-dropout throughput against references measured in the same run:

- visualize: the raw cost of its passes (one forward + backward to the input per step on the N
  images), and the one-unit-at-a-time way (N runs of one image each);
- MC dropout: K x B plain forwards in the same chunks (raw), and the per-pass way (K forwards of
  the B images, one after the other).

    python scripts/bench_visualize.py --model efficientnet_lite0 --units 4 --steps 10 --size 128
"""

from __future__ import annotations

import argparse

import torch

from xaibench.core.runtime import default_chunk_size, prepare_model, resolve_device, tune_allocator
from xaibench.core.timing import seconds
from xaibench.methods.base import saliency_mode
from xaibench.methods.layers import find_target_layer
from xaibench.metrics.mc_dropout import dropout_active, find_dropout, mc_dropout_probabilities
from xaibench.models import load_model
from xaibench.visualize import Unit, visualise_units

REPEATS = 3


def fastest(device: torch.device, function) -> float:
    """The fastest of REPEATS runs, in seconds (the machine may be shared), CUDA synchronised."""
    return min(seconds(device, function) for _ in range(REPEATS))


def bench_visualize(loaded, model, device, units: int, steps: int, size: int) -> None:
    layer = find_target_layer(model, (size, size))
    chosen = [Unit(layer, c) for c in range(units)]

    def run(some):
        return visualise_units(
            model,
            some,
            mean=loaded.mean,
            std=loaded.std,
            size=(size, size),
            steps=steps,
            device=device,
        )

    images = torch.rand(units, 3, size, size, device=device)

    def raw():
        with saliency_mode(model):  # no parameter gradients, as in visualise_units
            for _ in range(steps + 1):
                model(images.clone().requires_grad_(True)).sum().backward()

    run(chosen[:1])  # warm-up
    ours, alone, reference = (
        fastest(device, lambda: run(chosen)),
        fastest(device, lambda: [run([u]) for u in chosen]),
        fastest(device, raw),
    )
    print(f"visualize  {units} units x {steps} steps at {size}px on {layer}")
    print(
        f"  batched {ours:7.2f} s   raw f+b {reference:7.2f} s (ratio {reference / ours:.2f})"
        f"   one unit at a time {alone:7.2f} s (ratio {alone / ours:.2f})"
    )


def bench_mc_dropout(model, device, passes: int, batch: int, size: int) -> None:
    sites = find_dropout(model, (size, size))
    chunk = default_chunk_size(device)
    images = torch.randn(batch, 3, size, size, device=device)
    targets = torch.zeros(batch, dtype=torch.long, device=device)

    def ours():
        mc_dropout_probabilities(
            model, images, targets, sites, passes=passes, chunk_size=chunk, seed=0
        )

    copies = images[:1].expand(chunk, -1, -1, -1).contiguous()

    @torch.no_grad()
    def raw():
        for _ in range(passes * batch // chunk):
            model(copies)

    @torch.no_grad()
    def per_pass():
        with dropout_active(model, sites):
            for _ in range(passes):
                model(images).softmax(dim=1)

    ours()  # warm-up
    a, b, c = fastest(device, ours), fastest(device, raw), fastest(device, per_pass)
    b *= passes * batch / (passes * batch // chunk * chunk)
    print(f"mc-dropout sites: {', '.join(map(str, sites))}")
    print(f"mc-dropout {passes} passes x {batch} images at {size}px, chunks of {chunk}")
    print(
        f"  batched {a:7.2f} s   raw forwards {b:7.2f} s (ratio {b / a:.2f})"
        f"   per pass {c:7.2f} s (ratio {c / a:.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--units", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--passes", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    tune_allocator()
    device = resolve_device(args.device)
    loaded = load_model(args.model, "none")
    model = prepare_model(loaded.model, device).eval()
    bench_visualize(loaded, model, device, args.units, args.steps, args.size)
    bench_mc_dropout(model, device, args.passes, args.batch, args.size)


if __name__ == "__main__":
    main()
