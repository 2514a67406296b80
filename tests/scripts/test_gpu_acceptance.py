"""scripts/gpu_acceptance.py --smoke (what `make gpu-check SMOKE=1` runs): every check of the GPU
acceptance run on the CPU against the CPU, so the script keeps working where no GPU is; and its
comparisons fail where the two sides differ."""

import importlib
import json
import sys
from pathlib import Path

import torch

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
    assert "0 failed" in capsys.readouterr().out


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
