"""generate and evaluate under torchrun (2 processes, Gloo on the CPU) against single-process runs.

Every command runs in a subprocess with one thread, so both sides compute the same numbers: stores and
tables must agree element for element (batch size 1, so no map depends on its batch-mates).
"""

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from launch import ROOT, command, environment
from tiny_models import GATE

from xaibench.data.classes import imagenet_classes
from xaibench.store import open_store
from xaibench.store.shards import shard_dir, shard_paths

MODEL, GATED = "tiny_models:tiny_cnn", "tiny_models:gated_tiny_cnn"
METHODS = ("tgrad", "gradcam")
IMAGES = 7  # odd, so the two processes get different numbers of images
TABLES = ("per_image.csv", "summary.csv")


def xaibench(*args, nproc: int | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command(*args, nproc=nproc),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def generate_args(model: str, data: Path, out: Path) -> list:
    return [
        *("generate", "--model", model, "--saliency", ",".join(METHODS), "--data", data),
        *("--out", out, "--batch-size", 1, "--quiet"),
    ]


def evaluate_args(model: str, stores: list[Path], data: Path, out: Path) -> list:
    listed = [a for store in stores for a in ("--store", store)]
    return [
        *("evaluate", "--model", model, *listed, "--data", data, "--out", out),
        *("--metrics", "deletion,avg_drop", "--step", 3136, "--batch-size", 1, "--quiet"),
    ]


def stores_of(out: Path, model: str) -> list[Path]:
    return [out / model.replace(":", "_") / f"{method}.h5" for method in METHODS]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("dist") / "val"
    for i in range(IMAGES):
        folder = root / imagenet_classes().wnid(i * 100)
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def single(data) -> Path:
    """One process: the stores of both methods and their tables, in one subprocess."""
    out = data.parent / "single"
    stores = stores_of(out / "runs", MODEL)
    steps = [
        generate_args(MODEL, data, out / "runs"),
        evaluate_args(MODEL, stores, data, out / "metrics"),
    ]
    script = "import sys\nfrom xaibench.cli import cli\n" + "".join(
        f"cli.main({[str(a) for a in args]!r}, standalone_mode=False)\n" for args in steps
    )
    subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=environment(), check=True, timeout=300
    )
    return out


def assert_same_stores(a: Path, b: Path) -> None:
    """Same images, labels, classes, scores and maps, bit for bit, in the same row order."""
    with open_store(a) as one, open_store(b) as other:
        assert other.complete and other.ids == one.ids
        np.testing.assert_array_equal(other.labels, one.labels)
        np.testing.assert_array_equal(other.targets, one.targets)
        np.testing.assert_array_equal(other.scores, one.scores)
        rows = np.arange(len(one))
        np.testing.assert_array_equal(other.read_maps(rows), one.read_maps(rows))
        assert other.meta.method == one.meta.method


def assert_same_tables(a: Path, b: Path, stem: str) -> None:
    for table in TABLES:
        assert (b / f"{stem}.{table}").read_bytes() == (a / f"{stem}.{table}").read_bytes(), table
    with np.load(a / f"{stem}.curves.npz") as one, np.load(b / f"{stem}.curves.npz") as other:
        assert sorted(other.files) == sorted(one.files)
        for name in one.files:
            np.testing.assert_array_equal(other[name], one[name])


def test_generate_on_two_processes_equals_one_process(data, single, tmp_path):
    result = xaibench(*generate_args(MODEL, data, tmp_path), nproc=2)
    assert result.stdout.count("images in") == 1  # process 1 prints nothing
    assert f"{IMAGES} images in" in result.stdout
    for ours, theirs in zip(
        stores_of(tmp_path, MODEL), stores_of(single / "runs", MODEL), strict=True
    ):
        assert_same_stores(theirs, ours)
        assert not shard_dir(ours).exists()
    logs = tmp_path / "tiny_models_tiny_cnn" / "logs"
    assert "process 1 of 2" in (logs / "rank-1.log").read_text()
    assert "4 of 7 rows to write here" in (logs / "rank-0.log").read_text()


def test_evaluate_on_two_processes_writes_the_same_tables(data, single, tmp_path):
    stores = stores_of(single / "runs", MODEL)
    result = xaibench(*evaluate_args(MODEL, stores, data, tmp_path), nproc=2)
    assert result.stdout.count("| tiny_models:tiny_cnn | tgrad |") == 1
    for method in METHODS:
        assert_same_tables(single / "metrics", tmp_path, f"{method}-polycam(step=3136)")
    assert not list(tmp_path.glob(".*checkpoint*"))
    assert "3 rows done by this process" in (tmp_path / "logs" / "rank-1.log").read_text()


def done_rows_of_shards(path: Path) -> np.ndarray:
    """Rows done in any shard store of `path`, read while their writers may still be running."""
    done = np.zeros(IMAGES, bool)
    for shard in shard_paths(path):
        try:
            with h5py.File(shard, "r", locking=False) as f:
                done |= f["done"][:]
        except (OSError, KeyError):
            continue  # being created or written at this moment
    return done


def test_a_dead_process_leaves_its_rows_and_a_rerun_on_another_number_completes_them(
    data, single, tmp_path
):
    stores = stores_of(tmp_path, GATED)
    with socket.create_server(("127.0.0.1", 0)) as gate:
        gate.settimeout(240)  # a guard against a hang, not a measured bound
        host, port = gate.getsockname()[:2]
        launched = subprocess.Popen(
            command(*generate_args(GATED, data, tmp_path), nproc=2),
            cwd=ROOT,
            env={**environment(), GATE: f"{host}:{port}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        waiting = [gate.accept()[0] for _ in range(2)]  # each process at its second image
        for connection in waiting:
            connection.settimeout(240)
        pids = [int(connection.makefile().readline()) for connection in waiting]
        os.kill(pids[0], signal.SIGKILL)  # one process dies; torchrun stops the other
        assert launched.wait(timeout=120) != 0
        for connection in waiting:
            connection.close()
    assert not any(store.exists() for store in stores)
    with open_store(shard_paths(stores[0])[0]) as shard:  # a killed shard store opens and reads
        assert len(shard) == IMAGES
    missing = ~np.all([done_rows_of_shards(s) for s in stores], axis=0)
    assert 0 < missing.sum() < IMAGES

    result = xaibench(*generate_args(GATED, data, tmp_path))  # one process, no torchrun, no gate
    assert f"{missing.sum()} images in" in result.stdout  # only the missing ones
    for ours, theirs in zip(stores, stores_of(single / "runs", MODEL), strict=True):
        assert_same_stores(theirs, ours)
        assert not shard_dir(ours).exists()


def test_interrupted_evaluation_resumes_on_two_processes(
    data, single, tmp_path, monkeypatch, invoke
):
    from xaibench.metrics import METRICS

    store = stores_of(single / "runs", MODEL)[0]
    deletion, calls = METRICS.get("deletion"), []
    original = deletion.score_batch

    def stop_in_the_second_batch(ctx):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(ctx)

    monkeypatch.setattr(deletion, "score_batch", stop_in_the_second_batch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses, so that the row computed here is the same
    try:
        args = evaluate_args(MODEL, [store], data, tmp_path)
        assert invoke(*args, catch_exceptions=True).exit_code != 0
    finally:
        torch.set_num_threads(threads)
    checkpoint = tmp_path / ".tgrad-polycam(step=3136).checkpoint.npz"
    with np.load(checkpoint) as saved:
        assert saved["done"].sum() == 1

    xaibench(*evaluate_args(MODEL, [store], data, tmp_path), nproc=2)
    assert_same_tables(single / "metrics", tmp_path, "tgrad-polycam(step=3136)")
    assert "1 rows already evaluated" in (tmp_path / "logs" / "rank-1.log").read_text()
    assert not checkpoint.exists()
    per_image = pd.read_csv(tmp_path / "tgrad-polycam(step=3136).per_image.csv")
    assert len(per_image) == IMAGES


def test_run_under_torchrun_writes_the_tables_of_one_process(image_folder, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(
        "\n".join(
            [
                '[run]\nname = "tiny"\ndevice = "cpu"\nbatch_size = 2',
                f'[data]\ndataset = "folder"\nroot = "{image_folder}"',
                f'[[models]]\nname = "{MODEL}"\nweights = "none"',
                '[generate]\nmethods = ["gradient", "random"]',
                '[evaluate]\nmetrics = ["insertion", "deletion"]\nstep = 4096',
                "[report]\nimages = 2\nresamples = 99",
            ]
        ),
        "utf-8",
    )
    xaibench("run", config, "--out", tmp_path / "two", "--quiet", nproc=2)
    xaibench("run", config, "--out", tmp_path / "one", "--quiet")
    folder = Path("tiny_models_tiny_cnn") / "metrics"
    for name in ("gradient", "random"):
        table = f"{name}-polycam(step=4096).per_image.csv"
        two = pd.read_csv(tmp_path / "two" / folder / table).drop(columns="seconds_per_image")
        one = pd.read_csv(tmp_path / "one" / folder / table).drop(columns="seconds_per_image")
        pd.testing.assert_frame_equal(two, one)
    record = json.loads((tmp_path / "two" / "run.json").read_text("utf-8"))
    assert {stage["status"] for stage in record["stages"].values()} == {"done"}


def test_a_failure_of_process_0_alone_stops_the_others_with_its_message(image_folder, tmp_path):
    (next(image_folder.glob("*/")) / "broken.png").write_bytes(b"not an image")
    config = tmp_path / "tiny.toml"
    config.write_text(
        f'[run]\nname = "tiny"\ndevice = "cpu"\n[data]\ndataset = "folder"\nroot = "{image_folder}"'
        f'\n[[models]]\nname = "{MODEL}"\nweights = "none"\n[generate]\nmethods = ["random"]\n',
        "utf-8",
    )
    result = subprocess.run(
        command("run", config, "--out", tmp_path / "run", "--quiet", nproc=2),
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    failure = "1 undecodable image(s), first"  # the dataset stage, run by process 0 alone
    assert f"error: {image_folder}: {failure}" in result.stderr
    assert f"error: process 0 failed, so process 1 stops: DataError: {image_folder}: {failure}" in (
        result.stderr
    )
    assert "[rank1]: Traceback" not in result.stderr
