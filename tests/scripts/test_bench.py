"""scripts/bench.py: the eval section's one-image reference runs at fp32 whatever `--precision`,
the raw forwards at xaibench's precision (and also at fp32 when that is not fp32); a timing runs
its minimum seconds; the GPU peak is looked up by the most specific name; the memory slope is of
per-batch peaks."""

import argparse
import importlib
import mmap
import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
bench = importlib.import_module("bench")

CPU = torch.device("cpu")


def worker_args(worker: str, precision: str) -> argparse.Namespace:
    return argparse.Namespace(
        model="resnet18",
        size=32,
        images=1,
        chunk_size=4,
        precision=precision,
        compile=False,
        worker=worker,
        worker_repeat=1,
        peak_tflops=None,
        min_seconds=0.0,
    )


def test_step_precisions_keep_the_reference_at_fp32():
    for precision in ("fp32", "tf32", "bf16"):
        assert bench.step_precisions("one-image", precision) == {"one-image": "fp32"}
    assert bench.step_precisions("xaibench", "bf16") == {
        "xaibench": "bf16",
        "raw": "bf16",
        "raw fp32": "fp32",
    }
    assert bench.step_precisions("xaibench", "fp32") == {"xaibench": "fp32", "raw": "fp32"}
    compiled = bench.step_precisions("xaibench", "fp32", compile=True)
    assert compiled == {"xaibench": "fp32+compile", "raw": "fp32+compile", "raw fp32": "fp32"}
    assert bench.step_precisions("one-image", "bf16", compile=True) == {"one-image": "fp32"}
    assert bench.settings_of("bf16+compile") == {"precision": "bf16", "compile": True}
    assert bench.settings_of("fp32") == {"precision": "fp32", "compile": False}


def test_rotated_starts_each_repeat_one_step_later():
    names = ["a", "b", "c"]
    assert [bench.rotated(names, r) for r in range(4)] == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


@pytest.fixture()
def conv_dtypes(monkeypatch):
    """The dtype of the first convolution's output in every forward the worker runs."""
    seen: list[torch.dtype] = []
    prepare = bench.prepare_model

    def recording(model, device):
        model = prepare(model, device)
        model.conv1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
        return model

    monkeypatch.setattr(bench, "prepare_model", recording)
    return seen


def test_one_image_worker_runs_fp32_under_bf16(conv_dtypes):
    result = bench.evaluation_worker(worker_args("one-image", "bf16"), CPU)
    assert result["precisions"] == {"one-image": "fp32"}
    assert set(result["times"]) == {"one-image"}
    assert conv_dtypes and set(conv_dtypes) == {torch.float32}


def test_xaibench_worker_times_raw_forwards_at_both_precisions(conv_dtypes):
    result = bench.evaluation_worker(worker_args("xaibench", "bf16"), CPU)
    assert result["precisions"] == {"xaibench": "bf16", "raw": "bf16", "raw fp32": "fp32"}
    assert all(len(t) == 1 and t[0] > 0 for t in result["times"].values())
    assert set(result["times"]) == set(result["precisions"])
    assert {torch.bfloat16, torch.float32} <= set(conv_dtypes)
    assert result["flops_per_image"] > 0


def test_report_names_each_sides_precision():
    times = {
        "xaibench": [1.0, 1.2],
        "raw": [1.0, 1.1],
        "raw fp32": [3.0, 3.3],
        "one-image": [4.0, 4.4],
    }
    precisions = {"xaibench": "bf16", "raw": "bf16", "raw fp32": "fp32", "one-image": "fp32"}
    lines = bench.evaluation_lines(worker_args("", "bf16"), CPU, times, precisions, 1e9)
    by_label = {line.split("  ")[1].strip(): line for line in lines[2:-1]}
    assert set(by_label) == {
        "raw forwards, same count, bf16",
        "raw forwards, same count, fp32",
        "one image at a time, fp32",
    }
    assert "raw bf16 vs fp32  3.00 [3.00-3.00]" in by_label["raw forwards, same count, fp32"]
    assert lines[1].split()[:2] == ["xaibench,", "bf16"]
    fp32_only = {k: v for k, v in precisions.items() if k != "raw fp32"}
    fp32_only.update(xaibench="fp32", raw="fp32")
    times.pop("raw fp32")
    lines = bench.evaluation_lines(worker_args("", "fp32"), CPU, times, fp32_only, 1e9)
    assert sum("raw forwards" in line for line in lines) == 1


def test_seconds_per_call_is_the_median_after_one_warm_up(monkeypatch):
    bench_methods = importlib.import_module("bench_methods")
    calls = []
    took = iter([3.0, 1.0, 2.0])
    monkeypatch.setattr(bench_methods, "seconds", lambda device, step: step() or next(took))
    assert bench_methods.seconds_per_call(lambda: calls.append(1), 3, CPU) == 2.0
    assert len(calls) == 4


def test_a_peer_that_fails_at_bf16_runs_at_fp32():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    x = torch.randn(4, 3)
    activations = []
    model[0].register_forward_hook(lambda module, inputs, output: activations.append(output))

    def numpy_peer():  # what pytorch-grad-cam does with the activations it hooks
        activations.clear()
        model(x)
        return activations[0].detach().numpy()

    def torch_peer():
        return model(x).sum()

    peers = {"numpy": numpy_peer, "torch": torch_peer}
    bf16 = bench.peer_precisions(peers, model, CPU, "bf16")
    assert bf16 == {"numpy": "fp32", "torch": "bf16"}
    assert bench.peer_precisions(peers, model, CPU, "fp32") == {"numpy": "fp32", "torch": "fp32"}
    assert bench.at_precision(numpy_peer, model, CPU, bf16["numpy"])().dtype == "float32"
    assert "forward" not in model.__dict__  # the model's own forward is back


def test_compile_reaches_xaibench_and_raw_forwards_but_not_the_references(monkeypatch):
    real, asked = bench.forward_settings, []

    def recording(model, device, precision="fp32", compile=False):
        asked.append((precision, compile))
        return real(model, device, precision)  # eager here: compiling is slow and not under test

    monkeypatch.setattr(bench, "forward_settings", recording)
    args = worker_args("xaibench", "bf16")
    args.compile = True
    result = bench.evaluation_worker(args, CPU)
    assert sorted(asked) == [("bf16", True), ("bf16", True), ("fp32", False)]
    assert result["precisions"]["xaibench"] == "bf16+compile"


def test_occlusion_benchmark_runs_both_sides_on_the_same_work(capsys):
    bench_occlusion = importlib.import_module("bench_occlusion")
    argv = ["--size", "48", "--window", "24", "--stride", "12", "--batch-size", "2"]
    result = bench_occlusion.main([*argv, "--chunk", "3", "--repeats", "2"])
    assert result["difference"] < 1e-4  # the same maps: Captum's in each of its channels
    assert result["xaibench"] > 0 and result["captum"] > 0 and result["ratio"] > 0
    output = capsys.readouterr().out
    assert "forwards per image=10" in output and "ratio captum / xaibench time" in output


def test_occlusion_benchmark_alternates_which_side_goes_first(monkeypatch):
    bench_occlusion = importlib.import_module("bench_occlusion")
    order = []
    monkeypatch.setattr(bench_occlusion, "seconds", lambda device, step: step() or 1.0)
    ours, theirs = bench_occlusion.interleaved(
        lambda: order.append("ours"), lambda: order.append("captum"), 3, CPU
    )
    assert order == ["ours", "captum", "captum", "ours", "ours", "captum"]
    assert ours == theirs == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.0),
        ("NVIDIA H100 PCIe", "fp32", 51.0),
        ("NVIDIA H100 NVL", "bf16", 835.0),
        ("NVIDIA H100 NVL", "fp32", 60.0),
        ("NVIDIA H200", "tf32", 495.0),
        ("NVIDIA H200 NVL", "fp16", 835.0),
        ("NVIDIA GH200 480GB", "bf16", 989.0),
        ("NVIDIA A100-SXM4-80GB", "fp32", 19.5),
        ("NVIDIA A100 80GB PCIe", "tf32", 156.0),
        ("NVIDIA GeForce RTX 4090", "bf16", None),
        ("NVIDIA H1000", "bf16", None),
    ],
)
def test_the_peak_is_the_most_specific_entry_of_the_device_name(name, precision, peak):
    assert bench.peak_of(name, precision) == peak


def test_the_memory_slope_is_fitted_after_the_warm_up_batches():
    warm_up = [900.0, 700.0, 650.0, 640.0, 620.0]
    assert bench.memory_slope(warm_up + [600.0] * 25) == (5, pytest.approx(0.0, abs=1e-9))
    growing = warm_up + [600.0 + 2 * i for i in range(25)]
    start, slope = bench.memory_slope(growing)
    assert start == 5 and slope == pytest.approx(2.0)
    assert bench.memory_slope([10.0, 12.0, 14.0, 16.0, 18.0, 20.0])[0] == 2


@pytest.mark.skipif(
    not os.access(bench.CLEAR_REFS, os.W_OK), reason="the peak RSS cannot be reset here"
)
def test_a_reset_forgets_an_earlier_peak():
    size = 256 * 2**20
    with mmap.mmap(-1, size) as block:  # touched pages, unmapped again on close
        block.write(b"x" * size)
    before = bench.peak_mib(CPU)
    assert bench.reset_peak(CPU)
    assert bench.peak_mib(CPU) < before - 200


def test_a_timing_repeats_until_it_has_run_its_minimum(monkeypatch):
    calls = []
    took = iter([0.5, 1.5, 1.0, 4.0])
    monkeypatch.setattr(bench, "seconds", lambda device, step: step() or next(took))
    assert bench.mean_seconds(CPU, lambda: calls.append(1), 2.5) == pytest.approx(1.0)
    assert len(calls) == 3
    assert bench.mean_seconds(CPU, lambda: calls.append(1), 0.0) == 4.0
    assert len(calls) == 4
