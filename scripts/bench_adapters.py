"""The adapters' overhead: `captum.CLASS` and `gradcam-lib.CLASS` against the library called directly.

Each method is timed in the same run on the same model (torchvision's resnet18, random weights),
batch, targets and device: the adapter (`METHODS.get(name)(model, **settings)(images, targets)`)
and the library's own call, a warm-up each, then `--repeats` rounds that alternate which goes
first; the figure is the median over the rounds. Two direct references: the model as a user loads
it (weights requiring grad, so pytorch-grad-cam's backward also computes weight gradients), and
with its weights frozen, as the adapter runs it (`saliency_mode`): the adapter's own overhead.
Ratio = adapter time / direct time: 1.0 means no overhead, below 1 the adapter is faster.

    python scripts/bench_adapters.py                        # batch 4, 224 px, CPU
    python scripts/bench_adapters.py --device cuda --batch-size 32 --repeats 10
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from captum.attr import IntegratedGradients, Saliency
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from xaibench.core.runtime import resolve_device
from xaibench.core.timing import synchronise
from xaibench.methods import METHODS


def timed(device: torch.device, call: Callable[[], object]) -> float:
    synchronise(device)
    start = time.perf_counter()
    call()
    synchronise(device)
    return time.perf_counter() - start


@contextlib.contextmanager
def weights_frozen(model: torch.nn.Module, frozen: bool):
    for p in model.parameters():
        p.requires_grad_(not frozen)
    try:
        yield
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=8, help="Integrated Gradients' n_steps")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    images = torch.randn(args.batch_size, 3, args.size, args.size, device=device)
    targets = torch.arange(args.batch_size, device=device) * 7
    classes = [ClassifierOutputTarget(c) for c in targets.tolist()]

    def gradcam_direct(inputs: torch.Tensor = images) -> object:
        with GradCAM(model, [model.layer4]) as cam:
            return cam(inputs, classes)

    def gradcam_frozen() -> object:  # frozen weights: the gradient must start at the input
        return gradcam_direct(images.detach().requires_grad_(True))

    def saliency() -> object:
        return Saliency(model).attribute(images, target=targets)

    def integrated() -> object:
        return IntegratedGradients(model).attribute(images, target=targets, n_steps=args.steps)

    cases = [
        ("captum.Saliency", {}, saliency, saliency),
        ("captum.IntegratedGradients", {"n_steps": args.steps}, integrated, integrated),
        ("gradcam-lib.GradCAM", {"layer": "layer4"}, gradcam_direct, gradcam_frozen),
    ]
    print(
        f"resnet18 (random weights), batch {args.batch_size}, {args.size} px, {device}, "
        f"median of {args.repeats} rounds"
    )
    print(f"{'method':<28} {'adapter s':>10} {'direct s':>10} {'frozen s':>10} "
          f"{'ratio':>7} {'ratio frozen':>13}")  # fmt: skip
    for name, settings, direct, frozen in cases:
        method = METHODS.get(name)(model, **settings)
        sides: dict[str, Callable[[], object]] = {
            "adapter": lambda method=method: method(images, targets),
            "direct": direct,
            "frozen": frozen,
        }
        times: dict[str, list[float]] = {side: [] for side in sides}
        quiet = io.StringIO()
        with contextlib.redirect_stderr(quiet):
            for side, call in sides.items():  # warm-up
                with weights_frozen(model, side == "frozen"):
                    call()
            for round_ in range(args.repeats):
                order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
                for side in order:
                    with weights_frozen(model, side == "frozen"):
                        times[side].append(timed(device, sides[side]))
        median = {side: statistics.median(values) for side, values in times.items()}
        print(
            f"{name:<28} {median['adapter']:>10.4f} {median['direct']:>10.4f} "
            f"{median['frozen']:>10.4f} {median['adapter'] / median['direct']:>7.3f} "
            f"{median['adapter'] / median['frozen']:>13.3f}"
        )


if __name__ == "__main__":
    main()
