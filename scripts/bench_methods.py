"""Throughput of xaibench's saliency methods against pytorch-grad-cam's and Captum's versions.

Each method is timed in the same run as the peer's implementation of it, on the same model, target
layer (`find_target_layer`), batch, targets and device: a warm-up call, then the median of
`--repeats` calls, in `--rounds` rounds that alternate which side goes first; the ratio is the
median of the rounds' ratios, with their range. Ratio = peer time / xaibench time, so > 1 means
xaibench is faster. The peers get a deep copy of the model with `inplace=False` on every module
that has it (Captum's and pytorch-grad-cam's hooks dislike in-place ReLUs) and its parameters
requiring gradients, as a user would load it (pytorch-grad-cam needs that to see any gradient);
xaibench gets the original.

The expensive methods run a lighter workload, set by options: SmoothGrad (`--samples`) and
Integrated Gradients (`--steps`) use `--slow-repeats`; Score-CAM and Ablation-CAM, one forward per
(image, channel) pair, also use `--perturb-batch` images of `--perturb-size` pixels. The chunk
(pairs per forward) is `--chunk` on both sides. Last, the five gradient CAMs from one shared pass
(`explain_together`) are timed against the same five run one by one.

    python scripts/bench_methods.py                       # resnet50, batch 8, 224 px, CPU
    python scripts/bench_methods.py --model resnet18 --batch-size 4 --repeats 2
    python scripts/bench_methods.py --methods gradcam,intgrad --steps 32
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    FullGrad,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from xaibench.core.runtime import default_chunk_size, prepare_model, resolve_device, tune_allocator
from xaibench.core.timing import seconds, synchronise
from xaibench.methods import METHODS, explain_together, find_target_layer
from xaibench.models import load_model

Step = Callable[[], object]
TOGETHER = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam")


@dataclass
class Workload:
    """One batch for both sides: xaibench runs `model`, the peer `peer_model`.

    images (B, 3, H, W) channels_last; targets (B,): the model's top-1 classes; closers: peer
    clean-ups (pytorch-grad-cam's hooks) to run once the method is timed.
    """

    model: nn.Module
    peer_model: nn.Module
    layer: str
    images: torch.Tensor
    targets: torch.Tensor
    closers: list[Callable[[], None]] = field(default_factory=list)

    @property
    def peer_layer(self) -> nn.Module:
        return self.peer_model.get_submodule(self.layer)


PeerFactory = Callable[[Workload], Step]


@dataclass(frozen=True)
class Pair:
    """An xaibench method (registry name, parameters) and the peer's version of it.

    weight: "fast" (the main workload and repeats), "slow" (`--slow-repeats`) or "perturb"
    (`--slow-repeats` on the small perturbation workload).
    """

    name: str
    params: dict[str, Any]
    peer: PeerFactory
    peer_name: str
    weight: str = "fast"


def grad_cam(cls: type, **attributes: Any) -> PeerFactory:
    """A pytorch-grad-cam method on the target layer (FullGrad picks its own layers), with
    `attributes` set on it; its hooks are released after the timing."""

    def build(w: Workload) -> Step:
        cam = cls(model=w.peer_model, target_layers=[] if cls is FullGrad else [w.peer_layer])
        for key, value in attributes.items():
            setattr(cam, key, value)
        w.closers.append(cam.activations_and_grads.release)
        targets = [ClassifierOutputTarget(int(t)) for t in w.targets]
        return lambda: cam(input_tensor=w.images, targets=targets)

    return build


def captum(make: Callable[[Workload], Any], **kwargs: Any) -> PeerFactory:
    """A Captum attribution built by make(workload), called with the workload's targets."""

    def build(w: Workload) -> Step:
        method = make(w)
        extra = {k: v(w) if callable(v) else v for k, v in kwargs.items()}
        return lambda: method.attribute(w.images, target=w.targets, **extra)

    return build


def method_pairs(args: argparse.Namespace, layer: str) -> list[Pair]:
    chunk, pgc = args.chunk, "pytorch-grad-cam"
    cams = {
        "gradcam": GradCAM,
        "gradcampp": GradCAMPlusPlus,
        "xgradcam": XGradCAM,
        "layercam": LayerCAM,
        "hirescam": HiResCAM,
        "eigencam": EigenCAM,
    }
    return [
        *(Pair(name, {"layer": layer}, grad_cam(cls), pgc) for name, cls in cams.items()),
        Pair(
            "scorecam",
            {"layer": layer, "channel_batch": chunk},
            grad_cam(ScoreCAM, batch_size=chunk),
            pgc,
            "perturb",
        ),
        Pair(
            "ablationcam",
            {"layer": layer, "channel_batch": chunk},
            grad_cam(AblationCAM, batch_size=chunk),
            pgc,
            "perturb",
        ),
        Pair("fullgrad", {}, grad_cam(FullGrad), pgc),
        Pair("gradient", {}, captum(lambda w: Saliency(w.peer_model), abs=True), "captum"),
        Pair("gradinput", {}, captum(lambda w: InputXGradient(w.peer_model)), "captum"),
        Pair("guidedbackprop", {}, captum(lambda w: GuidedBackprop(w.peer_model)), "captum"),
        Pair("deconvnet", {}, captum(lambda w: Deconvolution(w.peer_model)), "captum"),
        Pair(
            "guidedgradcam",
            {"layer": layer},
            captum(
                lambda w: GuidedGradCam(w.peer_model, w.peer_layer), interpolate_mode="bilinear"
            ),
            "captum",
        ),
        Pair(
            "smoothgrad",
            {"samples": args.samples, "noise": args.noise, "sample_batch": chunk},
            captum(
                lambda w: NoiseTunnel(Saliency(w.peer_model)),
                nt_type="smoothgrad",
                nt_samples=args.samples,
                # Captum batches samples of every image together; ours batches `chunk` pairs
                nt_samples_batch_size=lambda w: max(1, chunk // len(w.images)),
                stdevs=lambda w: args.noise * float(w.images.max() - w.images.min()),
            ),
            "captum",
            "slow",
        ),
        Pair(
            "intgrad",
            {"steps": args.steps, "step_batch": chunk},
            captum(
                lambda w: IntegratedGradients(w.peer_model),
                n_steps=args.steps,
                internal_batch_size=chunk,
            ),
            "captum",
            "slow",
        ),
    ]


def seconds_per_call(step: Step, repeats: int, device: torch.device) -> float:
    """Median wall time of `repeats` calls after one warm-up call."""
    step()
    synchronise(device)
    return statistics.median(seconds(device, step) for _ in range(repeats))


def quiet(step: Step) -> Step:
    """The step with stderr swallowed (pytorch-grad-cam's tqdm bars, Captum's warnings)."""

    def run() -> object:
        with contextlib.redirect_stderr(io.StringIO()):
            return step()

    return run


def peer_copy(model: nn.Module) -> nn.Module:
    """A deep copy with `inplace=False` everywhere, in eval mode, parameters requiring gradients."""
    peer = copy.deepcopy(model).eval()
    for module in peer.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return peer.requires_grad_(True)


def make_workload(
    model: nn.Module, peer: nn.Module, layer: str, batch: int, size: int, device: torch.device
) -> Workload:
    images = torch.randn(batch, 3, size, size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        targets = model.eval()(images).argmax(dim=1)
    return Workload(model, peer, layer, images, targets)


@dataclass
class Timing:
    """Seconds per call of both sides (medians over rounds) and the spread of the ratio.

    ratios: peer / xaibench per round; peer and ratios are empty when the peer failed (`error`).
    """

    ours: float
    peer: float | None = None
    ratios: list[float] = field(default_factory=list)
    error: str = ""


def time_pair(pair: Pair, w: Workload, repeats: int, rounds: int, device: torch.device) -> Timing:
    """Both sides timed in `rounds` alternating rounds (xaibench first in even rounds, the peer
    first in odd ones), `repeats` calls each, so that load on a shared machine hits both alike."""
    method = METHODS.get(pair.name)(w.model, **pair.params)
    ours_step = lambda: method(w.images, w.targets)  # noqa: E731
    try:
        peer_step = quiet(pair.peer(w))
        ours, peers = [], []
        for round_index in range(rounds):
            order = [(ours, ours_step), (peers, peer_step)]
            for times, step in order[:: 1 if round_index % 2 == 0 else -1]:
                times.append(seconds_per_call(step, repeats, device))
        ratios = [peer / mine for peer, mine in zip(peers, ours, strict=True)]
        return Timing(statistics.median(ours), statistics.median(peers), ratios)
    except Exception as error:  # a peer that fails is reported, not fatal
        ours = seconds_per_call(ours_step, repeats, device)
        return Timing(ours, error=f"{type(error).__name__}: {str(error).splitlines()[0][:70]}")
    finally:
        for close in w.closers:
            close()
        w.closers.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--methods", default="all", help="comma-separated names, or 'all'")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slow-repeats", type=int, default=1, help="for smoothgrad, intgrad, *CAM")
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternating xaibench/peer rounds (shows the spread)"
    )
    parser.add_argument("--perturb-batch", type=int, default=1, help="for scorecam, ablationcam")
    parser.add_argument("--perturb-size", type=int, default=64, help="for scorecam, ablationcam")
    parser.add_argument("--samples", type=int, default=8, help="SmoothGrad noisy copies")
    parser.add_argument("--noise", type=float, default=0.15, help="SmoothGrad noise / range")
    parser.add_argument("--steps", type=int, default=16, help="Integrated Gradients steps")
    parser.add_argument("--chunk", type=int, default=None, help="pairs per forward")
    parser.add_argument("--together", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    tune_allocator()
    device = resolve_device(args.device)
    args.chunk = args.chunk or default_chunk_size(device)
    torch.manual_seed(0)
    model = prepare_model(load_model(args.model, "none").model, device)
    peer = peer_copy(model)
    layer = find_target_layer(model)
    pairs = method_pairs(args, layer)
    if args.methods != "all":
        wanted = args.methods.split(",")
        unknown = set(wanted) - {p.name for p in pairs}
        if unknown:
            parser.error(f"no peer for {', '.join(sorted(unknown))}")
        pairs = [p for p in pairs if p.name in wanted]
    main_load = make_workload(model, peer, layer, args.batch_size, args.size, device)
    perturb_load = make_workload(model, peer, layer, args.perturb_batch, args.perturb_size, device)

    print(
        f"model={args.model} layer={layer} device={device} threads={torch.get_num_threads()} "
        f"chunk={args.chunk} samples={args.samples} steps={args.steps}"
    )
    header = f"{'method':<15}{'peer':<18}{'batch':>10}{'xaibench img/s':>16}{'peer img/s':>12}"
    spread = "  ratio per round (min-max)" if args.rounds > 1 else ""
    print(f"{header}{'ratio':>8}{spread}")
    for pair in pairs:
        w = perturb_load if pair.weight == "perturb" else main_load
        repeats = args.repeats if pair.weight == "fast" else min(args.repeats, args.slow_repeats)
        timing = time_pair(pair, w, repeats, args.rounds, device)
        batch = f"{len(w.images)}x{w.images.shape[-1]}px"
        row = f"{pair.name:<15}{pair.peer_name:<18}{batch:>10}{len(w.images) / timing.ours:>16.2f}"
        if timing.peer is None:
            print(f"{row}{'failed':>12}{'-':>8}  {timing.error}", flush=True)
            continue
        row += f"{len(w.images) / timing.peer:>12.2f}{statistics.median(timing.ratios):>8.2f}"
        if args.rounds > 1:
            row += f"  {min(timing.ratios):.2f}-{max(timing.ratios):.2f}"
        print(row, flush=True)

    if args.together:
        methods = [METHODS.get(name)(model, layer=layer) for name in TOGETHER]
        images, targets = main_load.images, main_load.targets
        shared = seconds_per_call(
            lambda: explain_together(methods, images, targets), args.repeats, device
        )
        apart = seconds_per_call(
            lambda: [m(images, targets) for m in methods], args.repeats, device
        )
        print(
            f"\n{'+'.join(TOGETHER)} on {layer}, batch {len(images)}: one shared pass "
            f"{len(images) / shared:.2f} img/s, one by one {len(images) / apart:.2f} img/s, "
            f"ratio {apart / shared:.2f}"
        )


if __name__ == "__main__":
    main()
