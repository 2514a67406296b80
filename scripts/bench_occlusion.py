"""Throughput of xaibench's Occlusion against Captum's `Occlusion`, same model, images and settings.

Both sides explain the same batch (B, 3, H, W) for the model's top-1 classes, with the same
window, stride and baseline, and the explained score of xaibench's method (the softmax
probability: Captum gets the model followed by a softmax). Both run the same number of images per
forward: `--chunk` window positions for every image of the batch (xaibench's `window_batch`,
Captum's `perturbations_per_eval`). The first call of each side is a warm-up, and its maps are
compared (Captum's (B, 3, H, W) attribution has xaibench's map in each channel). Then `--repeats`
pairs of calls, back to back, alternating which side goes first: img/s is the median over the
repeats of each side, and the ratio (Captum's time / xaibench's, > 1: xaibench is faster) the
median of the pairs' ratios, so that load on a shared machine, which drifts between pairs, hits
both sides of a pair alike. The model, the workload and the peer's copy of the model are
bench_methods.py's.

    python scripts/bench_occlusion.py                      # resnet18, 2 images of 224 px, CPU
    python scripts/bench_occlusion.py --window 16 --stride 8 --batch-size 1 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence

import torch
from bench_methods import Pair, Step, captum, make_workload, peer_copy, quiet
from captum.attr import Occlusion as CaptumOcclusion

from xaibench.core.runtime import prepare_model, resolve_device, tune_allocator
from xaibench.core.timing import seconds
from xaibench.methods import METHODS
from xaibench.models import load_model


def occlusion_pair(window: int, stride: int, baseline: float, chunk: int) -> Pair:
    """xaibench's `occlusion` and Captum's Occlusion of the softmax, window over all channels."""

    def softmaxed(w):
        return CaptumOcclusion(lambda x: w.peer_model(x).softmax(dim=1))

    settings = {"window": window, "stride": stride, "baseline": baseline, "window_batch": chunk}
    peer = captum(
        softmaxed,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=baseline,
        perturbations_per_eval=chunk,
    )
    return Pair("occlusion", settings, peer, "captum")


def interleaved(
    ours: Step, theirs: Step, repeats: int, device: torch.device
) -> tuple[list[float], list[float]]:
    """Seconds of `repeats` calls of each step, in pairs that alternate which side goes first."""
    times: tuple[list[float], list[float]] = ([], [])
    steps = (ours, theirs)
    for repeat in range(repeats):
        for side in (0, 1) if repeat % 2 == 0 else (1, 0):
            times[side].append(seconds(device, steps[side]))
    return times


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--window", type=int, default=32, help="the window's side, pixels")
    parser.add_argument("--stride", type=int, default=16, help="the window's step, pixels")
    parser.add_argument("--baseline", type=float, default=0.0)
    parser.add_argument("--chunk", type=int, default=16, help="window positions per forward")
    parser.add_argument("--repeats", type=int, default=3, help="pairs of timed calls")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    tune_allocator()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = prepare_model(load_model(args.model, "none").model, device)
    w = make_workload(model, peer_copy(model), "", args.batch_size, args.size, device)
    pair = occlusion_pair(args.window, args.stride, args.baseline, args.chunk)
    method = METHODS.get("occlusion")(model, **pair.params)
    forwards = method.passes(pair.params, None, (args.size, args.size)).forwards
    ours_step = lambda: method(w.images, w.targets).maps  # noqa: E731
    theirs_step = quiet(pair.peer(w))
    print(
        f"model={args.model} device={device} threads={torch.get_num_threads()} "
        f"batch={args.batch_size}x{args.size}px window={args.window} stride={args.stride} "
        f"baseline={args.baseline} chunk={args.chunk} ({args.chunk * args.batch_size} images per "
        f"forward) forwards per image={forwards}",
        flush=True,
    )
    ours, theirs = ours_step(), theirs_step()  # the warm-up calls
    scale = float(theirs.abs().max())
    difference = float((ours - theirs[:, 0]).abs().max()) / max(scale, 1e-30)
    print(
        f"maps agree: max |xaibench - captum| / max |captum| = {difference:.1e} (max {scale:.1e})"
    )
    ours_times, theirs_times = interleaved(ours_step, theirs_step, args.repeats, device)
    ratios = [t / o for o, t in zip(ours_times, theirs_times, strict=True)]
    print(f"{'':<10}{'median s':>10}{'img/s':>9}")
    rates = {}
    for side, times in (("xaibench", ours_times), ("captum", theirs_times)):
        rates[side] = args.batch_size / statistics.median(times)
        print(f"{side:<10}{statistics.median(times):>10.3f}{rates[side]:>9.3f}")
    ratio = statistics.median(ratios)
    print(
        f"ratio captum / xaibench time: {ratio:.2f} (median of {len(ratios)} pairs, "
        f"{min(ratios):.2f}-{max(ratios):.2f})",
        flush=True,
    )
    return {**rates, "ratio": ratio, "difference": difference}


if __name__ == "__main__":
    main()
