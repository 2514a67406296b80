"""The GPU acceptance run: every method and metric on the GPU against the CPU, a forced
out-of-memory, and the forward rates that project a full ImageNet validation run.

Offline by construction: EfficientNet-Lite0 with its packaged ImageNet weights, on scikit-image's
photographs resized to `--size`; the other models with random weights.

Checks (each a row of the table and of the JSON written to `--out`):
- method.MODEL.NAME: on Lite0, resnet50 and vit_b_16 (`METHOD_MODELS`), the maps on `--device`
  against the CPU's, fp32, same images and targets: the
  lowest per-image Pearson correlation must be >= 0.999; the baselines (`random`, `centre`,
  `constant`) must be identical. A method the model does not support is listed as skipped.
- metric.NAME: per-image values on `--device` against the CPU's on the same maps (Grad-CAM's,
  computed on the CPU), fp32: largest difference <= 1e-4 (the localisation metrics need boxes
  and are left out).
- oom: on CUDA, memory capped (`torch.cuda.set_per_process_memory_fraction`) so that a chunk of
  `--oom-chunk` perturbed images cannot fit: Insertion and Deletion must give the values of an
  uncapped run while the shared chunk size shrinks.
- rate.MODEL.PRECISION: raw forward rate in images/s at `--batch-size` (no check), and the
  projected hours for the 50,000 validation images at the rate of Insertion + Deletion's
  2 x points forwards per image.

`--smoke` runs the same code on the CPU against the CPU at a small size (the methods on resnet18
at 64 x 64), so CI keeps the script working; the forced out-of-memory needs CUDA and is skipped
there.

    python scripts/gpu_acceptance.py --out gpu.json              # on a GPU machine
    python scripts/gpu_acceptance.py --smoke --out smoke.json    # anywhere, about a minute
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from xaibench.core.batching import ChunkSize
from xaibench.core.errors import ConfigError
from xaibench.core.precision import forward_settings
from xaibench.core.runtime import prepare_model
from xaibench.core.timing import synchronise
from xaibench.methods import METHODS
from xaibench.metrics import METRICS, MetricContext, get_protocol, score_function
from xaibench.metrics.base import saliency_at_input_size
from xaibench.models import load_model

BASELINES = ("random", "centre", "constant")
METHOD_MODELS = (("efficientnet_lite0", "default"), ("resnet50", "none"), ("vit_b_16", "none"))
"""The methods' models: real weights where they are packaged; a ReLU network (the guided
methods) and a ViT (the attention maps, CAMs on tokens) with random ones."""
MIN_CORRELATION = 0.999
METRIC_TOLERANCE = 1e-4
IMAGENET_VAL = 50_000
LIGHT = {
    "rise": {"masks": 256},
    "intgrad": {"steps": 16},
    "smoothgrad": {"samples": 8},
    "smoothgrad_sq": {"samples": 8},
    "vargrad": {"samples": 8},
}
"""Lighter settings for the methods that run hundreds of forwards per image (the check compares
devices, not settings)."""


def photos(size: int, count: int, mean: tuple, std: tuple) -> torch.Tensor:
    """(count, 3, size, size) of scikit-image's photographs, normalised by `mean`, `std`."""
    from skimage import data

    names = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field")
    pictures = []
    for i in range(count):
        image = torch.from_numpy(getattr(data, names[i % len(names)])()[..., :3].copy())
        image = image.permute(2, 0, 1)[None].float() / 255
        pictures.append(F.interpolate(image, size=(size, size), mode="bilinear", antialias=True))
    x = torch.cat(pictures)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) Pearson correlation of each pair of maps; where one is constant, 1 if the two are
    equal up to float rounding (rtol 1e-5), else 0."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    same = torch.isclose(a, b, rtol=1e-5, atol=0.0).all(dim=1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    norm = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(norm > 0, (a * b).sum(1) / norm.clamp_min(1e-300), same.double())


def shown(row: dict[str, Any]) -> dict[str, Any]:
    """`row`, printed as a line of the table as soon as it is known."""
    print(f"{row['check']:<40}  {row['status']:<7}  {row['detail']}", flush=True)
    return row


def on_both(name: str, weights: str, device, size: int, count: int) -> tuple:
    """(the model on the CPU, a copy of it, the same weights, on `device`, `count` photos at
    `size`)."""
    loaded = load_model(name, weights)
    on_device = prepare_model(copy.deepcopy(loaded.model), device).eval()
    return loaded.model.eval(), on_device, photos(size, count, loaded.mean, loaded.std)


def check_methods(model, model_cpu, model_dev, images, device, names) -> list[dict[str, Any]]:
    rows = []
    with torch.no_grad():
        targets = model_cpu(images).argmax(1)
    x, t = images.to(device), targets.to(device)
    for name in names:
        params = LIGHT.get(name, {})
        try:
            start = time.perf_counter()
            ours = METHODS.get(name)(model_dev, **params)(x, t)
            synchronise(device)
            elapsed = time.perf_counter() - start
            reference = METHODS.get(name)(model_cpu, **params)(images, targets)
        except ConfigError as refusal:
            rows.append(
                shown(
                    {"check": f"method.{model}.{name}", "status": "skipped", "detail": str(refusal)}
                )
            )
            continue
        maps = ours.maps.cpu()
        if name in BASELINES:
            passed, detail = torch.equal(maps, reference.maps), "identical"
        else:
            lowest = correlation(maps, reference.maps).min().item()
            passed, detail = lowest >= MIN_CORRELATION, f"min correlation {lowest:.6f}"
        rows.append(
            shown(
                {
                    "check": f"method.{model}.{name}",
                    "status": "pass" if passed else "FAIL",
                    "detail": detail,
                    "seconds": elapsed,
                }
            )
        )
    return rows


def metric_context(model, images, maps, targets, chunk) -> MetricContext:
    score_fn = score_function(model)
    protocol = get_protocol("polycam", step=max(1, images.shape[-1] ** 2 // 16))
    return MetricContext(
        images, maps, targets, score_fn(images, targets), score_fn, protocol, chunk,
        pixel_std=(0.502,) * 3, model=model,
    )  # fmt: skip


def check_metrics(model_cpu, model_dev, images, device, chunk) -> list[dict[str, Any]]:
    rows = []
    with torch.no_grad():
        targets = model_cpu(images).argmax(1)
    maps = METHODS.get("gradcam")(model_cpu)(images, targets).maps
    maps = saliency_at_input_size(maps, tuple(images.shape[-2:]))
    on_cpu = metric_context(model_cpu, images, maps, targets, chunk)
    on_dev = metric_context(
        model_dev, images.to(device), maps.to(device), targets.to(device), chunk
    )
    for name in METRICS.names():
        metric = METRICS.get(name)
        if metric.needs_boxes:
            continue
        ours = metric.score_batch(on_dev).values[name].cpu().double()
        reference = metric.score_batch(on_cpu).values[name].double()
        gap = (ours - reference).nan_to_num(0.0).abs().max().item()
        passed = gap <= METRIC_TOLERANCE and torch.equal(ours.isnan(), reference.isnan())
        rows.append(
            shown(
                {
                    "check": f"metric.{name}",
                    "status": "pass" if passed else "FAIL",
                    "detail": f"max |difference| {gap:.2e}",
                }
            )
        )
    return rows


def check_oom(model_dev, images, device, chunk: int) -> dict[str, Any]:
    if device.type != "cuda":
        return {"check": "oom", "status": "skipped", "detail": "needs CUDA"}
    x = images.to(device)
    with torch.no_grad():
        targets = model_dev(x).argmax(1)
    maps = torch.rand(images.shape[0], *images.shape[-2:], device=device)

    def run(chunk_size: ChunkSize) -> dict[str, torch.Tensor]:
        ctx = metric_context(model_dev, x, maps, targets, chunk_size)
        return {
            m: METRICS.get(m).score_batch(ctx).values[m].cpu() for m in ("insertion", "deletion")
        }

    reference = run(ChunkSize(8))
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(device).total_memory
    # what is held now and 1 GiB more: room for chunks of 8, not for `chunk`
    cap = min(1.0, (torch.cuda.memory_reserved(device) + 2**30) / total)
    torch.cuda.set_per_process_memory_fraction(cap, device)
    shared = ChunkSize(chunk)
    try:
        capped = run(shared)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    equal = all(torch.allclose(capped[m], reference[m], atol=1e-5) for m in reference)
    return {
        "check": "oom",
        "status": "pass" if equal and shared.reduced else "FAIL",
        "detail": f"chunk {chunk} -> {shared.value} under a {cap:.1%} cap, values equal: {equal}",
    }


def rates(device, size: int, batch: int, models, precisions, repeats: int) -> list[dict]:
    rows = []
    points = get_protocol("polycam").n_steps(size * size)
    for name in models:
        model = prepare_model(load_model(name, "none").model, device).eval()
        x = torch.randn(batch, 3, size, size, device=device)
        x = x.contiguous(memory_format=torch.channels_last)
        for precision in precisions:
            with torch.no_grad(), forward_settings(model, device, precision):
                model(x)
                synchronise(device)
                start = time.perf_counter()
                for _ in range(repeats):
                    model(x)
                synchronise(device)
            rate = batch * repeats / (time.perf_counter() - start)
            hours = IMAGENET_VAL * 2 * points / rate / 3600
            rows.append(
                shown(
                    {
                        "check": f"rate.{name}.{precision}",
                        "status": "info",
                        "detail": f"{rate:.1f} images/s; Insertion+Deletion of 50,000 images "
                        f"({2 * points} forwards each): {hours:.1f} h",
                        "images_per_second": rate,
                        "projected_hours": hours,
                    }
                )
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="CPU against CPU at a small size")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--oom-chunk", type=int, default=4096)
    parser.add_argument("--methods", default=None, help="comma-separated (default: all)")
    parser.add_argument("--out", type=Path, default=Path("gpu_acceptance.json"))
    args = parser.parse_args(argv)
    if args.smoke:
        device, size, count, batch, repeats = torch.device("cpu"), 64, 2, 4, 2
        method_models, method_size = (("resnet18", "none"),), 64
        models, precisions = ("resnet18",), ("fp32", "bf16")
    else:
        device, size, count = torch.device(args.device), args.size, args.images
        batch, repeats = args.batch_size, 10
        method_models, method_size = METHOD_MODELS, size
        models, precisions = ("resnet50", "vgg16"), ("fp32", "tf32", "bf16", "fp16")
    names = args.methods.split(",") if args.methods else METHODS.names()
    torch.manual_seed(0)  # the random weights
    rows = []
    for name, weights in method_models:
        model_cpu, model_dev, images = on_both(name, weights, device, method_size, count)
        rows += check_methods(name, model_cpu, model_dev, images, device, names)
    model_cpu, model_dev, images = on_both("efficientnet_lite0", "default", device, size, count)
    rows += check_metrics(model_cpu, model_dev, images, device, chunk=64)
    rows.append(shown(check_oom(model_dev, images, device, args.oom_chunk)))
    rows += rates(device, size, batch, models, precisions, repeats)
    failed = [r["check"] for r in rows if r["status"] == "FAIL"]
    report = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor(),
        "torch": torch.__version__,
        "smoke": args.smoke,
        "size": size,
        "rows": rows,
        "failed": failed,
    }
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{len(failed)} failed; written to {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
