"""xaibench's throughput against its peers and against the hardware, in one run on one machine.

Sections (`--sections`, all by default):
- gen: images/s of T-Grad, Grad-CAM and gradient x input against the model's raw forward + backward
  to the input (parameter gradients off: the floor for one-pass methods), pytorch-grad-cam's
  Grad-CAM and Captum's InputXGradient, on the same model, batch, targets, device and precision;
  a peer that fails at `--precision` runs at fp32 and is labelled so (pytorch-grad-cam converts
  activations to NumPy, which has no bfloat16).
- eval: Insertion + Deletion against the raw forwards it must do (2 x points per image, as plain
  batched forwards of `--chunk-size` images, at the same `--precision`) and against the one-image
  way of the reference pipeline (each image's perturbed copies built step by step in Python and
  scored in batches of 64), which always runs at fp32: that pipeline had no precision option. With
  a `--precision` other than fp32 the raw forwards are also timed at fp32, which shows what the
  precision alone buys. `--compile` compiles xaibench's forwards and the raw ones (torch.compile;
  the one-image way stays eager, and the raw forwards are then also timed eager at fp32). The
  xaibench side tunes the allocator (as the CLI does), so each side runs
  in its own subprocess, the one-image way with glibc's default allocator, all else equal.
- memory: peak memory (CPU: peak RSS; CUDA: torch.cuda.max_memory_allocated) of each of
  `--memory-batches` batches of generate's work (T-Grad, a background store write) and
  evaluate's (insertion and deletion at a coarse step), the peak reset before each batch (on the
  CPU where Linux allows it: /proc/self/clear_refs), and its slope: flat means no growth.

Each eval timing covers `--images` images (default by device, `DEFAULT_IMAGES`), repeated after
its warm-up until it has run `--min-seconds` (default by device, `MIN_SECONDS`: a GPU finishes a
few images too fast for its clock to be read well); its time is the mean per call.

Candidates and references alternate within every repeat (the order rotates), so a noisy shared
machine slows both alike; each line gives the median and, in brackets, the min-max over repeats,
and ratios are medians of the per-repeat ratios. On CUDA it also prints the fraction of the GPU's
peak reached (FLOPs counted with torch.utils.flop_counter, peak from `--peak-tflops` or the table
below) and the projected time for the 50,000 ImageNet validation images.

    python scripts/bench.py                                   # resnet18, batch 8, CPU
    python scripts/bench.py --model resnet50 --device cuda --batch-size 64 --precision bf16
    python scripts/bench.py --sections eval --precision bf16 --compile   # CPU with AMX
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from bench_methods import captum, grad_cam, make_workload, peer_copy, quiet
from captum.attr import InputXGradient
from pytorch_grad_cam import GradCAM
from torch.utils.flop_counter import FlopCounterMode

from xaibench.core.precision import forward_settings
from xaibench.core.runtime import default_chunk_size, prepare_model, resolve_device, tune_allocator
from xaibench.core.timing import seconds, synchronise
from xaibench.methods import METHODS, find_target_layer
from xaibench.methods.base import saliency_mode
from xaibench.methods.targets import explained_score
from xaibench.metrics import METRICS, MetricContext, get_protocol, score_function
from xaibench.models import load_model
from xaibench.store import Rows, StoreMeta, create_or_resume
from xaibench.store.writer import BackgroundWriter

Step = Callable[[], object]
FULL_VAL = 50_000
# Dense peak TFLOP/s by precision, from the vendors' data sheets (no sparsity), by the words of
# the device name; the entry with the most words in the name wins ("H100 NVL" over "H100").
SXM_HOPPER = {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0, "fp16": 989.0}
NVL_HOPPER = {"fp32": 60.0, "tf32": 418.0, "bf16": 835.0, "fp16": 835.0}
PEAK_TFLOPS = {
    "H100 PCIe": {"fp32": 51.0, "tf32": 378.0, "bf16": 756.0, "fp16": 756.0},
    "H100 NVL": NVL_HOPPER,
    "H100": SXM_HOPPER,
    "H200 NVL": NVL_HOPPER,
    "H200": SXM_HOPPER,
    "GH200": SXM_HOPPER,
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
}
DEFAULT_IMAGES = {"cpu": 2, "cuda": 16}
"""Images per eval timing when `--images` is not given."""
MIN_SECONDS = {"cpu": 0.0, "cuda": 3.0}
"""Seconds each eval timing runs at least, its warm-up excluded, when `--min-seconds` is not given."""
CLEAR_REFS = Path("/proc/self/clear_refs")
GLIBC_TUNING = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")
REFERENCE_PRECISION = "fp32"  # the reference pipeline's: it had no precision option


def alternate(steps: dict[str, Step], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """name -> seconds of each repeat; one warm-up call each, then the order rotates per repeat."""
    for step in steps.values():
        step()
    synchronise(device)
    times = {name: [] for name in steps}
    for r in range(repeats):
        for name in rotated(list(steps), r):
            times[name].append(seconds(device, steps[name]))
    return times


def rotated(names: list[str], repeat: int) -> list[str]:
    """The order of repeat `repeat`: `names` rotated left by `repeat` places."""
    shift = repeat % len(names)
    return names[shift:] + names[:shift]


def rate(count: float, times: list[float]) -> str:
    """`count / t` as median [min-max] over the repeats."""
    rates = sorted(count / t for t in times)
    return f"{statistics.median(rates):8.3g} [{rates[0]:.3g}-{rates[-1]:.3g}]"


def ratio(reference: list[float], candidate: list[float]) -> str:
    """Median [min-max] of reference time / candidate time per repeat: > 1 = candidate faster."""
    ratios = sorted(r / c for r, c in zip(reference, candidate, strict=True))
    return f"{statistics.median(ratios):5.2f} [{ratios[0]:.2f}-{ratios[-1]:.2f}]"


def peak_tflops(args: argparse.Namespace, device: torch.device) -> float | None:
    """`--peak-tflops`, else the table's peak of the CUDA device at `args.precision`, else None."""
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    return peak_of(torch.cuda.get_device_name(device), args.precision)


def peak_of(device_name: str, precision: str) -> float | None:
    """The `PEAK_TFLOPS` entry whose words are all words of `device_name` (case aside; words
    split at spaces, hyphens and underscores), the one with the most words first; None if none."""
    words = set(re.split(r"[\s_-]+", device_name.upper()))
    matches = [key for key in PEAK_TFLOPS if set(key.upper().split()) <= words]
    if not matches:
        return None
    return PEAK_TFLOPS[max(matches, key=lambda key: len(key.split()))][precision]


def flops_of(step: Step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def hardware_line(
    label: str, flops_per_image: float, images_per_second: float, peak: float | None
) -> str:
    achieved = flops_per_image * images_per_second / 1e12
    line = (
        f"  {label}: {flops_per_image / 1e9:.2f} GFLOP/img, {1000 * achieved:.1f} GFLOP/s achieved"
    )
    if peak:
        line += f" = {100 * achieved / peak:.1f}% of the {peak:g} TFLOP/s peak"
    hours = FULL_VAL / images_per_second / 3600
    return f"{line}; {FULL_VAL} images in {hours:.2f} h"


def raw_forward_backward(
    model: torch.nn.Module, images: torch.Tensor, backward: bool = False
) -> Step:
    """One forward and one backward to the input, parameter gradients off. `backward`: through
    `Tensor.backward` (what FlopCounterMode can follow) instead of `torch.autograd.grad`."""

    def step() -> None:
        with saliency_mode(model):
            x = images.detach().requires_grad_(True)
            logits = model(x)
            score = explained_score(logits, logits.argmax(1)).sum()
            if backward:
                score.backward()
            else:
                torch.autograd.grad(score, x)

    return step


def at_precision(step: Step, model: torch.nn.Module, device: torch.device, precision: str) -> Step:
    """`step` with `model`'s forward at `precision` for the duration of each call."""

    def run() -> object:
        with forward_settings(model, device, precision):
            return step()

    return run


def peer_precisions(
    peers: dict[str, Step], peer: torch.nn.Module, device: torch.device, precision: str
) -> dict[str, str]:
    """name -> the precision each peer runs at: `precision`, or fp32 for a peer that fails at it
    (pytorch-grad-cam turns activations into NumPy arrays, which have no bfloat16)."""
    chosen = {}
    for name, step in peers.items():
        chosen[name] = precision
        if precision != "fp32":
            try:
                at_precision(step, peer, device, precision)()
            except (TypeError, RuntimeError):
                chosen[name] = "fp32"
    return chosen


def generation(args: argparse.Namespace, device: torch.device) -> None:
    model = prepare_model(load_model(args.model, "none").model, device)
    layer = find_target_layer(model)
    peer = peer_copy(model)
    w = make_workload(model, peer, layer, args.batch_size, args.size, device)
    tgrad, gradcam = METHODS.get("tgrad")(model), METHODS.get("gradcam")(model, layer=layer)
    gradinput = METHODS.get("gradinput")(model)
    peers = {
        "pytorch-grad-cam gradcam": quiet(grad_cam(GradCAM)(w)),
        "captum gradinput": quiet(captum(lambda w: InputXGradient(w.peer_model))(w)),
    }
    precisions = peer_precisions(peers, peer, device, args.precision)
    peers = {
        name: at_precision(step, peer, device, precisions[name]) for name, step in peers.items()
    }
    with forward_settings(model, device, args.precision):
        steps = {
            "raw forward+backward": raw_forward_backward(model, w.images),
            "xaibench tgrad": lambda: tgrad(w.images, w.targets),
            "xaibench gradcam": lambda: gradcam(w.images, w.targets),
            "xaibench gradinput": lambda: gradinput(w.images, w.targets),
            **peers,
        }
        times = alternate(steps, args.repeats, device)
        # T-Grad does the raw forward + backward plus elementwise work on hooked layers: counted as
        # the former (FlopCounterMode cannot run with T-Grad's gradient hooks).
        flops = flops_of(raw_forward_backward(model, w.images[:1], backward=True))
    for close in w.closers:
        close()
    b = args.batch_size
    print(f"\ngeneration: {args.model}, layer {layer}, batch {b} x {args.size} px, img/s")
    raw = times["raw forward+backward"]
    print(f"  {'raw forward+backward':<28}{rate(b, raw)}")
    labels = {name: f"{name} ({p})" for name, p in precisions.items() if p != args.precision}
    for name, reference in (
        ("xaibench tgrad", "raw forward+backward"),
        ("xaibench gradcam", "raw forward+backward"),
        ("xaibench gradcam", "pytorch-grad-cam gradcam"),
        ("xaibench gradinput", "raw forward+backward"),
        ("xaibench gradinput", "captum gradinput"),
    ):
        label = labels.get(reference, reference)
        print(
            f"  {name:<28}{rate(b, times[name])}   vs {label:<26}{rate(b, times[reference])}"
            f"   ratio {ratio(times[reference], times[name])}"
        )
    peak = peak_tflops(args, device)
    speed = b / statistics.median(times["xaibench tgrad"])
    print(hardware_line("tgrad generation (forward+backward FLOPs)", flops, speed, peak))


def one_image_way(score_fn, image, substrate, saliency, target, step: int, batch: int = 64):
    """Deletion of one image as the reference pipeline does it: a Python loop over steps (run at
    `REFERENCE_PRECISION` by the caller)."""
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


def step_precisions(worker: str, precision: str, compile: bool = False) -> dict[str, str]:
    """The steps a worker times and the settings of each, "PRECISION" or "PRECISION+compile": the
    one-image way at the reference pipeline's fp32, eager; xaibench and its raw forwards at
    `precision` (compiled with `compile`), and then the raw forwards also at eager fp32 unless
    that is what xaibench ran at."""
    if worker == "one-image":
        return {"one-image": REFERENCE_PRECISION}
    ours = f"{precision}+compile" if compile else precision
    steps = {"xaibench": ours, "raw": ours}
    if ours != "fp32":
        steps["raw fp32"] = "fp32"
    return steps


def settings_of(label: str) -> dict[str, object]:
    """`forward_settings` keywords of a `step_precisions` label."""
    precision, _, compiled = label.partition("+")
    return {"precision": precision, "compile": compiled == "compile"}


def evaluation_worker(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """One timing of one side, in its own process: {"times": name -> [seconds for `args.images`
    images], "precisions": name -> precision it ran at, "flops_per_image": forward FLOPs}."""
    torch.manual_seed(0)
    model = prepare_model(load_model(args.model, "none").model, device).eval()
    score_fn = score_function(model)
    protocol = get_protocol("polycam")
    n, chunk = args.images, args.chunk_size or default_chunk_size(device)
    images = torch.randn(n, 3, args.size, args.size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    saliency = torch.rand(n, args.size, args.size, device=device)
    targets = torch.randint(0, 1000, (n,), device=device)
    forwards = 2 * protocol.n_steps(args.size * args.size) * n
    substrate = protocol.substrate("deletion", images)
    copies = images[:1].expand(chunk, -1, -1, -1).contiguous(memory_format=torch.channels_last)

    def ours(count: int = n) -> None:
        x, s, t = images[:count], saliency[:count], targets[:count]
        ctx = MetricContext(x, s, t, score_fn(x, t), score_fn, protocol, chunk)
        for name in ("insertion", "deletion"):
            METRICS.get(name).score_batch(ctx)

    def one_image(count: int = n) -> None:
        for i in range(count):  # deletion twice: insertion does the same forwards
            for _ in range(2):
                one_image_way(
                    score_fn,
                    images[i],
                    substrate[i],
                    saliency[i],
                    targets[i : i + 1],
                    protocol.step,
                )

    def raw(count: int = forwards // chunk) -> None:
        for _ in range(count):
            score_fn(copies, targets[:1].expand(chunk))

    steps = {"xaibench": ours, "raw": raw, "raw fp32": raw, "one-image": one_image}
    precisions = step_precisions(args.worker, args.precision, args.compile)
    times = {}
    for name in rotated(list(precisions), args.worker_repeat):
        with forward_settings(model, device, **settings_of(precisions[name])):
            steps[name](1)  # warm-up on one image (one chunk for raw), compiling with --compile
            times[name] = [mean_seconds(device, steps[name], args.min_seconds)]
        if name.startswith("raw"):
            times[name][0] *= forwards / (forwards // chunk * chunk)
    flops = forwards / n * flops_of(lambda: score_fn(images[:1], targets[:1]))
    return {"times": times, "precisions": precisions, "flops_per_image": flops}


def mean_seconds(device: torch.device, step: Step, min_seconds: float) -> float:
    """Seconds per call of `step`, called until the calls have taken `min_seconds` (once at least)."""
    calls, total = 0, 0.0
    while not calls or total < min_seconds:
        total += seconds(device, step)
        calls += 1
    return total / calls


def evaluation(args: argparse.Namespace, device: torch.device) -> None:
    tuned = {k: v for k, v in os.environ.items() if k not in GLIBC_TUNING}
    sides = {"xaibench": dict(tuned, **{"XAIBENCH_TUNE": "1"}), "one-image": tuned}
    times: dict[str, list[float]] = {}
    precisions: dict[str, str] = {}
    flops = 0.0
    for r in range(args.repeats):
        for side in list(sides) if r % 2 == 0 else list(reversed(sides)):
            command = [sys.executable, __file__, *sys.argv[1:], "--worker", side]
            command += ["--worker-repeat", str(r)]
            done = subprocess.run(command, env=sides[side], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"the {side} worker failed:\n{done.stderr}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if side == "xaibench":
                flops = result["flops_per_image"]
            precisions.update(result["precisions"])
            for name, values in result["times"].items():
                times.setdefault(name, []).extend(values)
    print("\n".join(evaluation_lines(args, device, times, precisions, flops)))


EVALUATION_LABELS = {
    "raw": "raw forwards, same count",
    "raw fp32": "raw forwards, same count",
    "one-image": "one image at a time",
}


def evaluation_lines(
    args: argparse.Namespace,
    device: torch.device,
    times: dict[str, list[float]],
    precisions: dict[str, str],
    flops: float,
) -> list[str]:
    """The eval section's report from the workers' seconds (step name -> per repeat) and the
    precision each step ran at (`step_precisions`)."""
    n = args.images
    points = get_protocol("polycam").n_steps(args.size * args.size)
    chunk = args.chunk_size or default_chunk_size(device)
    ours = times["xaibench"]
    lines = [
        f"\ninsertion+deletion: {args.model}, {n} images x 2 x {points} points, chunks of {chunk}, "
        "img/s (each side in its own process; the one-image way at fp32, the reference "
        "pipeline's precision)",
        f"  {'xaibench, ' + precisions['xaibench']:<34}{rate(n, ours)}",
    ]
    for name, label in EVALUATION_LABELS.items():
        if name not in times:
            continue
        line = f"  {label + ', ' + precisions[name]:<34}{rate(n, times[name])}"
        line += f"   ratio {ratio(times[name], ours)}"
        if name == "raw fp32":
            line += f"; raw {precisions['raw']} vs fp32 {ratio(times[name], times['raw'])}"
        lines.append(line)
    speed = n / statistics.median(ours)
    lines.append(hardware_line("insertion+deletion", flops, speed, peak_tflops(args, device)))
    return lines


def memory(args: argparse.Namespace, device: torch.device) -> None:
    """Peak memory after each batch of generate's and evaluate's work; its slope per batch."""
    model = prepare_model(load_model(args.model, "none").model, device)
    tgrad = METHODS.get("tgrad")(model)
    score_fn = score_function(model)
    protocol = get_protocol("polycam", step=args.size * args.size // 8)
    metrics = [METRICS.get(m) for m in ("insertion", "deletion")]
    b, batches = args.batch_size, args.memory_batches
    peaks, resets = [], False
    with tempfile.TemporaryDirectory() as folder, forward_settings(model, device, args.precision):
        meta = StoreMeta(args.model, "none", "tgrad", {}, "predicted", {}, args.precision)
        ids = [f"img{i}" for i in range(b * batches)]
        store = create_or_resume(Path(folder) / "m.h5", meta, ids, np.zeros(len(ids), np.int64))
        writer = BackgroundWriter(store)
        try:
            for i in range(batches):
                resets = reset_peak(device)
                images = torch.randn(b, 3, args.size, args.size, device=device)
                images = images.contiguous(memory_format=torch.channels_last)
                explanation = tgrad(images)
                rows = np.arange(i * b, (i + 1) * b)
                maps = explanation.maps.detach().float()
                scores = explanation.logits.softmax(1).amax(1)
                writer.write(
                    Rows(
                        rows,
                        maps.cpu().numpy(),
                        explanation.targets.cpu().numpy(),
                        scores.cpu().numpy(),
                    )
                )
                ctx = MetricContext(
                    images, maps, explanation.targets, scores, score_fn, protocol, args.chunk_size
                )
                for metric in metrics:
                    metric.score_batch(ctx)
                synchronise(device)
                peaks.append(peak_mib(device))
        finally:
            writer.close()
    start, slope = memory_slope(peaks)
    kind = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS"
    kind += " of each batch" if resets else " so far (no reset here: a running maximum)"
    print(
        f"\nmemory: {kind} over {batches} batches of {b} (T-Grad + store write + insertion and "
        f"deletion): {peaks[0]:.0f} MiB in batch 1, {peaks[start]:.0f} in batch {start + 1}, "
        f"{peaks[-1]:.0f} in batch {batches}; slope {slope:+.2f} MiB/batch from batch {start + 1}"
    )


def memory_slope(peaks: list[float]) -> tuple[int, float]:
    """(first batch fitted, least-squares slope per batch) of the per-batch peaks, the first
    min(5, batches // 3) batches (warm-up: caches, allocator pools) left out."""
    start = min(5, len(peaks) // 3)
    return start, float(np.polyfit(np.arange(start, len(peaks)), peaks[start:], 1)[0])


def reset_peak(device: torch.device) -> bool:
    """Start a new peak for `peak_mib`; False where that cannot be done (CPU outside Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        CLEAR_REFS.write_text("5")  # Linux: resets the peak RSS to the current RSS
    except OSError:
        return False
    return True


def peak_mib(device: torch.device) -> float:
    """The peak since the last `reset_peak`: CUDA's allocated memory, else the process's RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help=f"images per insertion+deletion timing (default by device: {DEFAULT_IMAGES})",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=None,
        help=f"each eval timing repeats until it has run this long (default by device: "
        f"{MIN_SECONDS})",
    )
    parser.add_argument("--chunk-size", type=int, default=None, help="perturbed images per forward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16", "fp16"))
    parser.add_argument(
        "--compile",
        action="store_true",
        help="eval: torch.compile xaibench's and the raw forwards (the one-image way stays eager)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-batches", type=int, default=30)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak")
    parser.add_argument("--sections", default="gen,eval,memory")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-repeat", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    device = resolve_device(args.device)
    if args.images is None:
        args.images = DEFAULT_IMAGES.get(device.type, DEFAULT_IMAGES["cpu"])
    if args.min_seconds is None:
        args.min_seconds = MIN_SECONDS.get(device.type, MIN_SECONDS["cpu"])
    if args.worker:
        if os.environ.get("XAIBENCH_TUNE"):
            tune_allocator()
        print(json.dumps(evaluation_worker(args, device)))
        return
    tune_allocator()
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device={device} ({name}) threads={torch.get_num_threads()} precision={args.precision} "
        f"torch={torch.__version__} repeats={args.repeats}; median [min-max]"
    )
    sections = args.sections.split(",")
    if "gen" in sections:
        generation(args, device)
    if "eval" in sections:
        evaluation(args, device)
    if "memory" in sections:
        memory(args, device)


if __name__ == "__main__":
    main()
