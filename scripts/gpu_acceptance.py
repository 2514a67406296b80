"""The GPU acceptance run: every method and metric on the GPU against the CPU, reduced
precisions, a forced out-of-memory, a killed and resumed generation, torchrun on one device, and
the forward, decoding and store-writing rates that project a full ImageNet validation run.

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
- metric_precision.PRECISION.NAME: Insertion, Deletion, Average Drop and Increase on `--device`
  under tf32 and bf16 (`--smoke`: bf16, tf32 being fp32 on a CPU) against the CPU's fp32 values
  on the same maps, both figures reported: for Insertion and Deletion, largest per-image
  difference <= 0.08 and difference of the means <= 0.05, the AUC tolerances stated for bf16 on
  Lite0 in docs/perf-notes.md; Average Drop and Increase, for which none is stated, are info.
- fp16.NAME: on CUDA, the gradient methods (`FP16_METHODS`) on Lite0 under fp16: every map finite
  and not constant (skipped elsewhere: fp16 is refused on a CPU).
- resume: `xaibench generate` of Lite0 (a module:callable whose 4th forward, the second batch's
  first, kills its own process with SIGKILL) killed, run again (it must write only the rows
  missing), and run once more uninterrupted into another folder: the stores' maps must be equal.
- torchrun: the same generation under `torch.distributed.run --nproc-per-node 2`, both processes
  on the one device (`cuda:0` given explicitly): every row written once, the stores complete, the
  maps equal to the one-process run's.
- rate.MODEL.PRECISION: raw forward rate in images/s at `--batch-size` (no check), the FLOPs per
  forward with the fraction of the device's peak at that precision (`scripts/bench.py`'s table;
  n/a on a CPU), and the projected hours for the 50,000 validation images at the rate of
  Insertion + Deletion's 2 x points forwards per image.
- rate.decode: images/s of the photographs through the dataset and loader as generate reads them
  (the device's default decoding workers); rate.store.COMPRESSION.HxW: maps/s written to an HDF5
  store (random maps of Grad-CAM's 7 x 7 and of the input size), so that a GPU run shows whether
  the decoder or the store bounds generation (no check).

`--smoke` runs the same code on the CPU against the CPU at a small size (the methods on resnet18
at 64 x 64), so CI keeps the script working; the forced out-of-memory and fp16 need CUDA and are
skipped there.

    python scripts/gpu_acceptance.py --out gpu.json              # on a GPU machine
    python scripts/gpu_acceptance.py --smoke --out smoke.json    # anywhere, a minute or two
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from xaibench.core.batching import ChunkSize
from xaibench.core.errors import ConfigError
from xaibench.core.precision import forward_settings
from xaibench.core.runtime import default_workers, prepare_model
from xaibench.core.timing import synchronise
from xaibench.data.dataset import ImageFolderDataset, make_loader
from xaibench.data.samples import build_sample_dataset
from xaibench.methods import METHODS
from xaibench.metrics import METRICS, MetricContext, get_protocol, score_function
from xaibench.metrics.base import saliency_at_input_size
from xaibench.models import load_model
from xaibench.results.layout import store_path
from xaibench.store import Rows, StoreMeta, create_or_resume, open_store
from xaibench.store.shards import shard_dir

SCRIPTS = Path(__file__).resolve().parent
ROOT = SCRIPTS.parent
BASELINES = ("random", "centre", "constant")
METHOD_MODELS = (("efficientnet_lite0", "default"), ("resnet50", "none"), ("vit_b_16", "none"))
"""The methods' models: real weights where they are packaged; a ReLU network (the guided
methods) and a ViT (the attention maps, CAMs on tokens) with random ones."""
MIN_CORRELATION = 0.999
METRIC_TOLERANCE = 1e-4
PRECISION_METRICS = ("insertion", "deletion", "avg_drop", "increase")
AUC_TOLERANCE, MEAN_AUC_TOLERANCE = 0.08, 0.05
"""Largest |reduced precision - fp32| per image and of the means over the images: the bf16
tolerances of docs/perf-notes.md (tests/core/test_precision_real_model.py), stated for the
Insertion and Deletion AUCs."""
TOLERATED = ("insertion", "deletion")
"""The metrics the tolerances are stated for; the others' differences are reported (info)."""
FP16_METHODS = ("gradient", "gradcam", "tgrad", "intgrad", "smoothgrad")
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
RUN_METHODS = ("gradcam", "gradient")
RUN_IMAGES, RUN_BATCH = 4, 2
"""The generations of the resume and torchrun checks: 4 photographs in batches of 2, so that the
two processes of torchrun get one batch each, the batches of the one-process run."""
KILL_ENV = "XAIBENCH_ACCEPTANCE_KILL_AT"
KILL_AT_FORWARD = 4
"""Generate makes one forward to find Grad-CAM's layer, then two per batch (Grad-CAM's and the
gradient's): the 4th is the second batch's first, after the first batch was written."""
RUN_MODULE = "acceptance_lite0"
MODULE_SOURCE = f'''"""EfficientNet-Lite0 whose forward number ${KILL_ENV} (if set) kills its process."""

import os
import signal
import time

from torch import nn

from xaibench.models import load_model


class KilledAt(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.at, self.calls = int(os.environ.get("{KILL_ENV}", "0")), 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            time.sleep(1.0)  # the background writer stores the batches before
            os.kill(os.getpid(), signal.SIGKILL)
        return self.model(x)


def build():
    return KilledAt(load_model("efficientnet_lite0").model)
'''
RUN_TIMEOUT = 300
"""Seconds a generation subprocess may take: a guard against a hang, not a measured bound."""


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
            with forward_settings(model_dev, device, "fp32"):
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


def metric_values(model, images, maps, targets, chunk, names) -> dict[str, torch.Tensor]:
    """Metric name -> (B,) float64 per-image values on the CPU, computed where `model` is."""
    device = next(model.parameters()).device
    ctx = metric_context(model, images.to(device), maps.to(device), targets.to(device), chunk)
    return {n: METRICS.get(n).score_batch(ctx).values[n].cpu().double() for n in names}


def grad_cam_inputs(model_cpu, images) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets (B,), Grad-CAM's maps at the input size (B, H, W)), computed on the CPU."""
    with torch.no_grad():
        targets = model_cpu(images).argmax(1)
    maps = METHODS.get("gradcam")(model_cpu)(images, targets).maps
    return targets, saliency_at_input_size(maps, tuple(images.shape[-2:]))


def check_metrics(model_dev, images, maps, targets, reference, device, chunk) -> list[dict]:
    """Each metric's values on `device` at fp32 against the CPU's `reference`."""
    rows = []
    with forward_settings(model_dev, device, "fp32"):
        ours = metric_values(model_dev, images, maps, targets, chunk, list(reference))
    for name, values in ours.items():
        gap = (values - reference[name]).nan_to_num(0.0).abs().max().item()
        passed = gap <= METRIC_TOLERANCE and torch.equal(values.isnan(), reference[name].isnan())
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


def precision_gaps(ours: torch.Tensor, reference: torch.Tensor) -> tuple[float, float, bool]:
    """(largest per-image |difference|, |difference of the means|, same NaNs) of two (B,)."""
    finite = ~(ours.isnan() | reference.isnan())
    gap = (ours - reference)[finite].abs().max().item() if finite.any() else 0.0
    mean_gap = (
        (ours[finite].mean() - reference[finite].mean()).abs().item() if finite.any() else 0.0
    )
    return gap, mean_gap, torch.equal(ours.isnan(), reference.isnan())


def check_metric_precision(
    model_dev, images, maps, targets, reference, device, chunk, precisions
) -> list[dict]:
    """`PRECISION_METRICS` on `device` at each of `precisions` against the CPU's fp32 values."""
    rows = []
    for precision in precisions:
        with forward_settings(model_dev, device, precision):
            ours = metric_values(model_dev, images, maps, targets, chunk, PRECISION_METRICS)
        for name in PRECISION_METRICS:
            gap, mean_gap, same_nans = precision_gaps(ours[name], reference[name])
            passed = same_nans and gap <= AUC_TOLERANCE and mean_gap <= MEAN_AUC_TOLERANCE
            status = ("pass" if passed else "FAIL") if name in TOLERATED else "info"
            rows.append(
                shown(
                    {
                        "check": f"metric_precision.{precision}.{name}",
                        "status": status,
                        "detail": f"vs CPU fp32: max |difference| {gap:.2e}, of the means "
                        f"{mean_gap:.2e}"
                        + ("" if same_nans else ", NaNs differ")
                        + ("" if name in TOLERATED else " (no tolerance stated)"),
                        "max_difference": gap,
                        "mean_difference": mean_gap,
                    }
                )
            )
    return rows


def check_fp16(model_dev, images, device) -> list[dict]:
    """`FP16_METHODS` under fp16: every map finite and not constant; skipped where refused."""
    rows = []
    x = images.to(device)
    for name in FP16_METHODS:
        check = f"fp16.{name}"
        try:
            with forward_settings(model_dev, device, "fp16"):
                with torch.no_grad():
                    targets = model_dev(x).argmax(1)
                maps = METHODS.get(name)(model_dev, **LIGHT.get(name, {}))(x, targets).maps
        except ConfigError as refusal:
            rows.append(shown({"check": check, "status": "skipped", "detail": str(refusal)}))
            continue
        flat = maps.detach().float().flatten(1).cpu()
        finite = torch.isfinite(flat).all(1)
        spread = (flat.amax(1) - flat.amin(1)).where(finite, torch.zeros(()))
        passed = bool(finite.all() and (spread > 0).all())
        detail = (
            f"{int(finite.sum())}/{len(flat)} maps finite, smallest max - min {spread.min():.3g}"
        )
        rows.append(
            shown({"check": check, "status": "pass" if passed else "FAIL", "detail": detail})
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


class Generations:
    """`xaibench generate` of `RUN_METHODS` on Lite0 (as `RUN_MODULE`:build, from a temporary
    folder on PYTHONPATH) over `RUN_IMAGES` sample photographs, in subprocesses."""

    def __init__(self, root: Path, device: torch.device, size: int):
        self.root, self.device = root, device
        (root / f"{RUN_MODULE}.py").write_text(MODULE_SOURCE, "utf-8")
        self.data = build_sample_dataset(root / "photos")
        loaded = load_model("efficientnet_lite0")
        self.model = f"{RUN_MODULE}:build"
        stated = {"mean": loaded.mean, "std": loaded.std}
        self.args = [
            *("generate", "--model", self.model, "--data", self.data),
            *[
                a
                for key, values in stated.items()
                for a in (f"--{key}", ",".join(map(repr, values)))
            ],
            *("--input-size", size, "--saliency", ",".join(RUN_METHODS), "--limit", RUN_IMAGES),
            *("--batch-size", RUN_BATCH, "--device", device_argument(device)),
            *("--deterministic", "--quiet"),
        ]

    def start(self, out: Path, kill_at: int = 0, nproc: int = 1) -> subprocess.Popen:
        """The generation into `out`, started: killed at forward `kill_at` (0: never), on
        `nproc` processes (torchrun where more than one)."""
        launcher = [sys.executable, "-m", "xaibench"]
        if nproc > 1:
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            launcher += ["--nproc-per-node", str(nproc), "-m", "xaibench"]
        path = os.pathsep.join([str(self.root), str(ROOT), os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
        env.pop(KILL_ENV, None)
        if kill_at:
            env[KILL_ENV] = str(kill_at)
        return subprocess.Popen(
            launcher + [str(a) for a in (*self.args, "--out", out)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        )  # fmt: skip

    @staticmethod
    def finish(started: subprocess.Popen) -> subprocess.CompletedProcess:
        """The generation `started`, waited for; past `RUN_TIMEOUT` its process group is killed
        and its returncode is None."""
        try:
            stdout, stderr = started.communicate(timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(started.pid, signal.SIGKILL)
            stdout, stderr = started.communicate()
            return subprocess.CompletedProcess(started.args, None, stdout, stderr)
        return subprocess.CompletedProcess(started.args, started.returncode, stdout, stderr)

    def stores(self, out: Path) -> list[Path]:
        return [store_path(out, self.model, method, "h5") for method in RUN_METHODS]


def device_argument(device: torch.device) -> str:
    """`--device` for `device`: CUDA with an explicit index (`cuda:0` for `cuda`)."""
    if device.type == "cuda":
        return f"cuda:{0 if device.index is None else device.index}"
    return str(device)


def failed_run(result: subprocess.CompletedProcess, what: str) -> str:
    """Why a generation failed: its return code and the tail of its stderr."""
    code = "timed out" if result.returncode is None else f"exit {result.returncode}"
    return f"{what}: {code}: {' | '.join(result.stderr.strip().splitlines()[-6:])}"


def done_rows(path: Path) -> int:
    """Rows done in the store at `path` (0 where there is none)."""
    if not path.exists():
        return 0
    with open_store(path) as store:
        return int(store.done.sum())


def store_difference(ours: Path, reference: Path) -> str | None:
    """None if the store at `ours` is complete and holds `reference`'s rows, targets and maps
    exactly; else what differs."""
    if not ours.exists():
        return f"{ours.name}: missing"
    with open_store(ours) as one, open_store(reference) as other:
        if not one.complete:
            return f"{ours.name}: {len(one.pending_indices())} rows not done"
        if one.ids != other.ids or not np.array_equal(one.targets, other.targets):
            return f"{ours.name}: other images or targets"
        rows = np.arange(len(one))
        a, b = one.read_maps(rows), other.read_maps(rows)
        if not np.array_equal(a, b, equal_nan=True):
            return f"{ours.name}: maps differ (max |difference| {np.nanmax(np.abs(a - b)):.3g})"
    return None


def images_written(stdout: str) -> int | None:
    """The N of generate's "N images in ..." line (0 for "nothing to do"), None without one."""
    if "nothing to do" in stdout:
        return 0
    found = re.search(r"(\d+) images in", stdout)
    return int(found.group(1)) if found else None


def check_generations(runs: Generations) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resume and torchrun rows. Two generations run at a time: the one to kill with the
    uninterrupted one, then its resumption with torchrun's."""
    killed_out, whole_out, torchrun_out = (runs.root / n for n in ("killed", "whole", "torchrun"))
    start = time.perf_counter()
    killing, whole = runs.start(killed_out, kill_at=KILL_AT_FORWARD), runs.start(whole_out)
    killed = runs.finish(killing)
    done = [done_rows(path) for path in runs.stores(killed_out)]
    resuming = runs.start(killed_out) if killed.returncode == -signal.SIGKILL else None
    whole = runs.finish(whole)
    torchrun = runs.start(torchrun_out, nproc=2) if whole.returncode == 0 else None
    resumed = None if resuming is None else runs.finish(resuming)
    torchrun = None if torchrun is None else runs.finish(torchrun)
    seconds = time.perf_counter() - start
    return (
        {
            "check": "resume",
            **resume_result(runs, killed, done, resumed, whole),
            "seconds": seconds,
        },
        {"check": "torchrun", **torchrun_result(runs, torchrun, whole), "seconds": seconds},
    )


def compared(runs: Generations, ours: Path, theirs: Path) -> list[str]:
    """What differs between the stores of the generations into `ours` and `theirs`."""
    pairs = zip(runs.stores(ours), runs.stores(theirs), strict=True)
    return [d for one, other in pairs if (d := store_difference(one, other))]


def resume_result(runs, killed, done, resumed, whole) -> dict[str, str]:
    """The status and detail of the resume check."""
    if killed.returncode != -signal.SIGKILL:
        return {"status": "FAIL", "detail": failed_run(killed, "the run to kill")}
    if not all(0 < n < RUN_IMAGES for n in done):
        return {"status": "FAIL", "detail": f"rows done when killed: {done} of {RUN_IMAGES}"}
    if resumed.returncode != 0:
        return {"status": "FAIL", "detail": failed_run(resumed, "the resumed run")}
    if whole.returncode != 0:
        return {"status": "FAIL", "detail": failed_run(whole, "the uninterrupted run")}
    written, missing = images_written(resumed.stdout), RUN_IMAGES - min(done)
    if written != missing:
        return {"status": "FAIL", "detail": f"resumed, explained {written} images, not {missing}"}
    detail = f"killed (SIGKILL) with {done} of {RUN_IMAGES} rows done, resumed {written}: "
    differences = compared(runs, runs.root / "killed", runs.root / "whole")
    if differences:
        return {"status": "FAIL", "detail": detail + "; ".join(differences)}
    return {"status": "pass", "detail": detail + "maps equal the uninterrupted run's"}


def torchrun_result(runs, torchrun, whole) -> dict[str, str]:
    """The status and detail of the torchrun check, against the one-process run `whole`."""
    if whole.returncode != 0:
        return {"status": "FAIL", "detail": failed_run(whole, "the one-process run")}
    if torchrun.returncode != 0:
        return {"status": "FAIL", "detail": failed_run(torchrun, "torchrun --nproc-per-node 2")}
    out = runs.root / "torchrun"
    differences = compared(runs, out, runs.root / "whole")
    differences += [f"{p.name}: shards left" for p in runs.stores(out) if shard_dir(p).exists()]
    written = images_written(torchrun.stdout)
    if written != RUN_IMAGES:
        differences.append(f"explained {written} images, not {RUN_IMAGES}")
    if differences:
        return {"status": "FAIL", "detail": "; ".join(differences)}
    where = device_argument(runs.device)
    detail = f"2 processes on {where}: {RUN_IMAGES} rows once each, maps equal one process's"
    return {"status": "pass", "detail": detail}


def peak_tflops(device: torch.device, precision: str) -> tuple[float | None, str]:
    """(the device's peak TFLOP/s at `precision` from scripts/bench.py's table, or None, why)."""
    if device.type != "cuda":
        return None, f"no peak for {device.type}"
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    name = torch.cuda.get_device_name(device)
    try:
        peak = importlib.import_module("bench").peak_of(name, precision)
    except ImportError as error:
        return None, f"scripts/bench.py not importable ({error})"
    return peak, "" if peak else f"no peak listed for {name}"


def forward_flops(model, size: int) -> float:
    """FLOPs of one forward of one `size` x `size` image, counted on the CPU."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size))
    return float(counter.get_total_flops())


def rates(device, size: int, batch: int, models, precisions, repeats: int) -> list[dict]:
    rows = []
    points = get_protocol("polycam").n_steps(size * size)
    for name in models:
        model = load_model(name, "none").model
        flops = forward_flops(model, size)
        model = prepare_model(model, device).eval()
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
            achieved = flops * rate / 1e12
            peak, why = peak_tflops(device, precision)
            fraction = achieved / peak if peak else None
            of_peak = f"{fraction:.1%} of {peak:g}" if fraction is not None else f"n/a: {why}"
            rows.append(
                shown(
                    {
                        "check": f"rate.{name}.{precision}",
                        "status": "info",
                        "detail": f"{rate:.1f} images/s, {flops / 1e9:.2f} GFLOP each: "
                        f"{achieved:.3g} TFLOP/s ({of_peak}); Insertion+Deletion of 50,000 "
                        f"images ({2 * points} forwards each): {hours:.1f} h",
                        "images_per_second": rate,
                        "projected_hours": hours,
                        "flops_per_image": flops,
                        "fraction_of_peak": fraction,
                    }
                )
            )
    return rows


def decode_rate(data: Path, device, size: int, batch: int, repeats: int) -> dict[str, Any]:
    """images/s of the photographs in `data` through generate's dataset and loader, each
    `repeats` times, with the device's default workers (the first batch, which starts the
    workers, not timed)."""
    loaded = load_model("efficientnet_lite0")
    preprocess = get_protocol("polycam").preprocess(loaded.mean, loaded.std, (size, size))
    dataset = ImageFolderDataset(data, preprocess)
    workers = default_workers(device)
    rows = list(range(len(dataset))) * repeats
    loader = iter(make_loader(dataset, batch, workers, indices=rows, device=device))
    first, _ = next(loader)
    count, start = 0, time.perf_counter()
    for images, _ in loader:
        count += len(images)
    rate = count / (time.perf_counter() - start)
    return {
        "check": "rate.decode",
        "status": "info",
        "detail": f"{rate:.0f} images/s decoded to {size} x {size} ({workers} workers, "
        f"batches of {batch}, {count + len(first)} images)",
        "images_per_second": rate,
    }


def store_rates(root: Path, shapes, batch: int, batches: int) -> list[dict[str, Any]]:
    """maps/s written to a new HDF5 store, per map shape and compression (random maps)."""
    rows = []
    generator = np.random.default_rng(0)
    count = batch * batches
    for compression in ("lzf", None):
        for shape in shapes:
            maps = generator.random((batch, *shape), dtype=np.float32)
            meta = StoreMeta("acceptance", "none", "random", {}, "predicted", {})
            path = root / f"rate-{compression}-{shape[0]}x{shape[1]}.h5"
            ids, labels = [f"image{i}" for i in range(count)], np.zeros(count, np.int64)
            store = create_or_resume(path, meta, ids, labels, compression)
            start = time.perf_counter()
            for b in range(batches):
                indices = np.arange(b * batch, (b + 1) * batch)
                store.write(Rows(indices, maps, np.zeros(batch), np.ones(batch)))
            store.close()
            rate = count / (time.perf_counter() - start)
            megabytes = path.stat().st_size / 2**20
            path.unlink()
            rows.append(
                shown(
                    {
                        "check": f"rate.store.{compression or 'none'}.{shape[0]}x{shape[1]}",
                        "status": "info",
                        "detail": f"{rate:.0f} maps/s written ({count} maps in batches of "
                        f"{batch}, {megabytes:.3g} MiB)",
                        "maps_per_second": rate,
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
        metric_precisions, decode_repeats, store_batches = ("bf16",), 2, 2
    else:
        device, size, count = torch.device(args.device), args.size, args.images
        batch, repeats = args.batch_size, 10
        method_models, method_size = METHOD_MODELS, size
        models, precisions = ("resnet50", "vgg16"), ("fp32", "tf32", "bf16", "fp16")
        metric_precisions, decode_repeats, store_batches = ("tf32", "bf16"), 64, 16
    names = args.methods.split(",") if args.methods else METHODS.names()
    torch.manual_seed(0)  # the random weights
    rows = []
    for name, weights in method_models:
        model_cpu, model_dev, images = on_both(name, weights, device, method_size, count)
        rows += check_methods(name, model_cpu, model_dev, images, device, names)
    model_cpu, model_dev, images = on_both("efficientnet_lite0", "default", device, size, count)
    targets, maps = grad_cam_inputs(model_cpu, images)
    metrics = [m for m in METRICS.names() if not METRICS.get(m).needs_boxes]
    reference = metric_values(model_cpu, images, maps, targets, 64, metrics)
    rows += check_metrics(model_dev, images, maps, targets, reference, device, chunk=64)
    rows += check_metric_precision(
        model_dev, images, maps, targets, reference, device, 64, metric_precisions
    )
    rows += check_fp16(model_dev, images, device)
    rows.append(shown(check_oom(model_dev, images, device, args.oom_chunk)))
    with tempfile.TemporaryDirectory(prefix="gpu-acceptance-") as folder:
        runs = Generations(Path(folder), device, size)
        rows += [shown(row) for row in check_generations(runs)]
        rows += rates(device, size, batch, models, precisions, repeats)
        rows.append(shown(decode_rate(runs.data, device, size, batch, decode_repeats)))
        rows += store_rates(Path(folder), ((7, 7), (size, size)), batch, store_batches)
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
