"""scripts/gpu_acceptance.py --smoke (what `make gpu-check SMOKE=1` runs): every check of the GPU
acceptance run on the CPU against the CPU, so the script keeps working where no GPU is; and its
comparisons fail where the two sides differ."""

import importlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

from xaibench.store import Rows, StoreMeta, create_or_resume

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
acceptance = importlib.import_module("gpu_acceptance")


def test_the_smoke_run_passes_every_check_and_writes_its_report(tmp_path, capsys):
    out = tmp_path / "smoke.json"
    code = acceptance.main(["--smoke", "--out", str(out)])
    report = json.loads(out.read_text())
    assert code == 0, [row for row in report["rows"] if row["status"] == "FAIL"]
    statuses = {row["check"]: row["status"] for row in report["rows"]}
    assert report["smoke"] and report["failed"] == []
    assert statuses["method.resnet18.gradcam"] == statuses["method.resnet18.tgrad"] == "pass"
    assert statuses["method.resnet18.random"] == "pass"  # the baselines: identical
    assert statuses["method.resnet18.rollout"] == "skipped"  # no attention in a ResNet
    assert {f"metric.{m}" for m in ("insertion", "deletion", "road_morf", "avg_drop")} <= set(
        statuses
    )
    assert statuses["oom"] == "skipped"  # needs CUDA
    rate = next(row for row in report["rows"] if row["check"] == "rate.resnet18.fp32")
    assert rate["images_per_second"] > 0 and rate["projected_hours"] > 0
    assert rate["flops_per_image"] > 0 and rate["fraction_of_peak"] is None  # no peak for a CPU
    assert "n/a" in rate["detail"]
    assert statuses["metric_precision.bf16.insertion"] == "pass"
    assert statuses["metric_precision.bf16.deletion"] == "pass"
    assert statuses["metric_precision.bf16.avg_drop"] == "info"
    assert not any(check.startswith("metric_precision.tf32") for check in statuses)
    assert {statuses[f"fp16.{m}"] for m in acceptance.FP16_METHODS} == {"skipped"}
    assert statuses["resume"] == statuses["torchrun"] == "pass"
    assert statuses["rate.decode"] == "info"
    stores = [check for check in statuses if check.startswith("rate.store.")]
    assert len(stores) == 4 and {statuses[check] for check in stores} == {"info"}
    assert "0 failed" in capsys.readouterr().out


def test_the_precision_tolerances_are_those_of_the_real_model_test():
    path = Path(__file__).resolve().parents[1] / "core" / "test_precision_real_model.py"
    spec = importlib.util.spec_from_file_location("precision_real_model", path)
    real = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real)
    assert (acceptance.AUC_TOLERANCE, acceptance.MEAN_AUC_TOLERANCE) == (
        real.AUC_TOLERANCE,
        real.MEAN_AUC_TOLERANCE,
    )


def test_precision_gaps_measure_per_image_and_mean_differences():
    reference = torch.tensor([0.2, 0.5, float("nan")], dtype=torch.float64)
    ours = torch.tensor([0.3, 0.45, float("nan")], dtype=torch.float64)
    gap, mean_gap, same_nans = acceptance.precision_gaps(ours, reference)
    assert abs(gap - 0.1) < 1e-12
    assert abs(mean_gap - 0.025) < 1e-12 and same_nans
    assert not acceptance.precision_gaps(ours.nan_to_num(0.0), reference)[2]


def write_store(path: Path, maps: np.ndarray, done: int) -> Path:
    meta = StoreMeta("m", "none", "random", {}, "predicted", {})
    ids = [f"image{i}" for i in range(len(maps))]
    store = create_or_resume(path, meta, ids, np.zeros(len(maps), np.int64))
    rows = np.arange(done)
    store.write(Rows(rows, maps[rows], np.zeros(done), np.ones(done)))
    store.close()
    return path


def test_store_difference_tells_equal_stores_from_different_or_unfinished_ones(tmp_path):
    maps = np.random.default_rng(0).random((3, 7, 7), dtype=np.float32)
    reference = write_store(tmp_path / "reference.h5", maps, 3)
    assert (
        acceptance.store_difference(write_store(tmp_path / "same.h5", maps, 3), reference) is None
    )
    changed = maps.copy()
    changed[1, 0, 0] += 1e-6
    other = write_store(tmp_path / "other.h5", changed, 3)
    assert "maps differ" in acceptance.store_difference(other, reference)
    unfinished = write_store(tmp_path / "unfinished.h5", maps, 2)
    assert "1 rows not done" in acceptance.store_difference(unfinished, reference)
    assert "missing" in acceptance.store_difference(tmp_path / "none.h5", reference)
    assert acceptance.done_rows(unfinished) == 2 and acceptance.done_rows(tmp_path / "no.h5") == 0


def test_images_written_reads_generates_summary_line():
    assert acceptance.images_written("2 images in 0.3 s (6.1 img/s) -> a.h5") == 2
    assert acceptance.images_written("nothing to do: every image is already in a.h5") == 0
    assert acceptance.images_written("") is None


def test_correlation_tells_equal_maps_from_different_ones():
    maps = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(
        acceptance.correlation(maps, 2 * maps + 1), torch.ones(3, dtype=torch.float64)
    )
    assert (acceptance.correlation(maps, maps.flip(-1)) < 0.999).all()
    flat = torch.zeros(1, 8, 8)
    assert acceptance.correlation(flat, flat).item() == 1.0
    assert acceptance.correlation(flat, flat + 1).item() == 0.0
    assert acceptance.correlation(flat + 1, flat + 1 + 1e-7).item() == 1.0  # float rounding
