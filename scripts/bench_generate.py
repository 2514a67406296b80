"""Generation throughput of T-Grad and Grad-CAM against the model's raw forward + backward.

The reference is measured in the same run, on the same model, batch and device: one forward and one
backward to the input with parameter gradients off, the floor for one-pass methods. Ratios > 1 mean
the method is faster than that floor (Grad-CAM stops its backward at the target layer).

    python scripts/bench_generate.py --models resnet50,vgg16 --batch-size 8 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xaibench.methods import METHODS
from xaibench.methods.base import saliency_mode
from xaibench.models import load_model
from xaibench.runtime import prepare_model, resolve_device, tune_allocator


def images_per_second(step, batch_size: int, repeats: int, device: torch.device) -> float:
    step()  # warm-up: allocator, kernels selection, hooks
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def raw_forward_backward(model: torch.nn.Module, images: torch.Tensor):
    def step() -> None:
        with saliency_mode(model):
            x = images.detach().requires_grad_(True)
            logits = model(x)
            score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            torch.autograd.grad(score, x)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,vgg16")
    parser.add_argument("--methods", default="tgrad,gradcam")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    tune_allocator()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    print(
        f"device={device} batch={args.batch_size} size={args.size} threads={torch.get_num_threads()}"
    )
    print(f"{'model':<12}{'method':<12}{'img/s':>10}{'raw f+b img/s':>16}{'ratio':>8}")
    for model_name in args.models.split(","):
        model = prepare_model(load_model(model_name, "none").model, device)
        images = torch.randn(args.batch_size, 3, args.size, args.size, device=device).contiguous(
            memory_format=torch.channels_last
        )
        raw = images_per_second(raw_forward_backward(model, images), *_run(args, device))
        for method_name in args.methods.split(","):
            method = METHODS.get(method_name)(model)
            speed = images_per_second(lambda m=method, x=images: m(x), *_run(args, device))
            print(f"{model_name:<12}{method_name:<12}{speed:>10.2f}{raw:>16.2f}{speed / raw:>8.2f}")


def _run(args: argparse.Namespace, device: torch.device) -> tuple[int, int, torch.device]:
    return args.batch_size, args.repeats, device


if __name__ == "__main__":
    main()
