"""Insertion + Deletion throughput against two references measured in the same run:

- raw: the forward passes the metric must do (2 x points per image), as plain batched forwards;
- one-image: the T-Grad authors' way, one image at a time, its perturbed copies built
  step by step in Python and scored in batches of 64.

    python scripts/bench_evaluate.py --model resnet18 --images 2
"""

from __future__ import annotations

import argparse
import time

import torch

from xaibench.metrics import METRICS, MetricContext, get_protocol, score_function
from xaibench.models import load_model
from xaibench.runtime import default_chunk_size, prepare_model, resolve_device, tune_allocator


def one_image_way(score_fn, image, substrate, saliency, target, step: int, batch: int = 64):
    """Deletion of one image as the reference pipeline does it: a Python loop over steps."""
    _, h, w = image.shape
    order = saliency.flatten().argsort(descending=True, stable=True)
    current = image.clone()
    perturbed = []
    for k in range(1, (h * w + step - 1) // step + 1):
        pixels = order[(k - 1) * step : k * step]
        current.view(3, -1)[:, pixels] = substrate.reshape(3, -1)[:, pixels]
        perturbed.append(current.clone())
    stack = torch.stack(perturbed)
    return torch.cat([score_fn(chunk, target.expand(len(chunk))) for chunk in stack.split(batch)])


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    tune_allocator()
    device = resolve_device(args.device)
    chunk = args.chunk_size or default_chunk_size(device)
    torch.manual_seed(0)
    model = prepare_model(load_model(args.model, "none").model, device).eval()
    score_fn = score_function(model)
    protocol = get_protocol("polycam")
    images = torch.randn(args.images, 3, 224, 224, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    saliency = torch.rand(args.images, 224, 224, device=device)
    targets = torch.randint(0, 1000, (args.images,), device=device)
    ctx = MetricContext(
        images, saliency, targets, score_fn(images, targets), score_fn, protocol, chunk
    )
    points = protocol.n_steps(224 * 224)

    score_fn(images[:1], targets[:1])  # warm-up
    ours = timed(lambda: [METRICS.get(m).score_batch(ctx) for m in ("insertion", "deletion")])
    copies = images[:1].expand(chunk, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    raw_forwards = 2 * points * args.images
    raw = timed(
        lambda: [score_fn(copies, targets[:1].expand(chunk)) for _ in range(raw_forwards // chunk)]
    )
    raw *= raw_forwards / (raw_forwards // chunk * chunk)
    substrate = protocol.substrate("deletion", images)
    reference = 2 * timed(
        lambda: [
            one_image_way(
                score_fn, images[i], substrate[i], saliency[i], targets[i : i + 1], protocol.step
            )
            for i in range(args.images)
        ]
    )
    print(f"model={args.model} device={device} images={args.images} chunk={chunk} points={points}")
    print(f"xaibench insertion+deletion: {args.images / ours:.3f} img/s")
    print(f"raw forwards of the same count: {args.images / raw:.3f} img/s  ratio {raw / ours:.2f}")
    print(
        f"one image at a time, batches of 64: {args.images / reference:.3f} img/s  ratio {reference / ours:.2f}"
    )


if __name__ == "__main__":
    main()
