"""A resumed evaluation takes from its checkpoint only the results of the same evaluation, and an
evaluation stopped by SIGTERM saves its checkpoint first."""

import logging
import os
import signal
import socket
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from box_helpers import voc
from launch import ROOT, command, environment
from tiny_models import GATE, GATE_NO_GRAD

from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import ImageFolderDataset
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.pipelines.evaluate import evaluate_store
from xaibench.pipelines.generate import generate
from xaibench.pipelines.settings import RunSettings
from xaibench.store import open_store

CPU = torch.device("cpu")
MODEL = "tiny_models:tiny_cnn"
SIZE = (48, 40)  # the fixture's images, width x height


def write_boxes(folder, store_path, box):
    """One box of each image's explained class, at `box` (xmin, ymin, xmax, ymax)."""
    folder.mkdir()
    with open_store(store_path) as store:
        for image_id, target in zip(store.ids, store.targets, strict=True):
            stem = image_id.rsplit("/", 1)[1].rsplit(".", 1)[0]
            wnid = imagenet_classes().wnid(int(target))
            (folder / f"{stem}.xml").write_text(voc([(wnid, *box)], SIZE))
    return folder


def test_a_checkpoint_of_another_boxes_folder_is_not_reused(image_folder, tmp_path, caplog):
    loaded = load_model(MODEL)
    dataset = ImageFolderDataset(image_folder, get_protocol("polycam").preprocess())
    generate(
        loaded,
        ["centre"],
        dataset,
        tmp_path,
        settings=RunSettings.resolve(CPU, batch_size=4, progress=False),
    )
    store = tmp_path / "tiny_models_tiny_cnn" / "centre.h5"
    middle = write_boxes(tmp_path / "middle", store, (18, 14, 30, 26))  # where the map peaks
    corner = write_boxes(tmp_path / "corner", store, (1, 1, 10, 10))
    checkpoint = tmp_path / "metrics" / ".centre-polycam.checkpoint.npz"

    def evaluate(boxes, checkpoint=None):
        return evaluate_store(
            store,
            loaded,
            dataset,
            get_protocol("polycam"),
            ["pointing_game"],
            settings=RunSettings.resolve(CPU, batch_size=4, progress=False),
            boxes=boxes,
            checkpoint=checkpoint,
            checkpoint_seconds=0.0,
        )

    hits = evaluate(middle, checkpoint).per_image["pointing_game"].to_numpy()
    assert checkpoint.exists() and (hits == 1).all()
    with caplog.at_level(logging.INFO, logger="xaibench.pipelines.evaluate"):
        again = evaluate(middle, checkpoint).per_image["pointing_game"].to_numpy()
    assert "6 rows already evaluated" in caplog.text
    np.testing.assert_array_equal(again, hits)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="xaibench.pipelines.evaluate"):
        moved = evaluate(corner, checkpoint).per_image["pointing_game"].to_numpy()
    assert "from another evaluation" in caplog.text and "already evaluated" not in caplog.text
    np.testing.assert_array_equal(moved, evaluate(corner).per_image["pointing_game"].to_numpy())
    assert (moved == 0).all()


@pytest.fixture()
def one_thread():
    """One thread here, as in the subprocesses of `launch.environment`: the same float sums."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_sigterm_saves_the_checkpoint_and_a_rerun_resumes_from_it(
    image_folder, tmp_path, invoke, caplog, one_thread
):
    gated = "tiny_models:gated_tiny_cnn"
    generate(
        load_model(gated),
        ["centre"],
        ImageFolderDataset(image_folder, get_protocol("polycam").preprocess()),
        tmp_path,
        settings=RunSettings.resolve(CPU, batch_size=1, progress=False),
    )
    store = tmp_path / "tiny_models_gated_tiny_cnn" / "centre.h5"
    boxes = write_boxes(tmp_path / "boxes", store, (18, 14, 30, 26))

    def arguments(out):
        return [
            "evaluate", "--model", gated, "--store", store, "--data", image_folder,
            "--boxes", boxes, "--metrics", "pointing_game", "--batch-size", 1, "--out", out,
            "--quiet",
        ]  # fmt: skip

    reference, out = tmp_path / "uninterrupted", tmp_path / "stopped"
    invoke(*arguments(reference))
    with socket.create_server(("127.0.0.1", 0)) as gate:
        gate.settimeout(240)  # a guard against a hang, not a measured bound
        host, port = gate.getsockname()[:2]
        launched = subprocess.Popen(
            command(*arguments(out)),
            cwd=ROOT, env={**environment(), GATE: f"{host}:{port}", GATE_NO_GRAD: "1"},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        connection = gate.accept()[0]
        with connection:
            connection.settimeout(240)
            os.kill(int(connection.makefile().readline()), signal.SIGTERM)
            _, stderr = launched.communicate(timeout=120)
    assert launched.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    (checkpoint,) = out.glob(".*.checkpoint.npz")
    with np.load(checkpoint) as saved:
        assert saved["done"].sum() == 1  # the first image; the gate held the second one

    with caplog.at_level(logging.INFO, logger="xaibench.pipelines.evaluate"):
        invoke(*arguments(out))
    assert "1 rows already evaluated" in caplog.text
    assert not checkpoint.exists()
    tables = sorted(p.name for p in reference.glob("*.csv"))
    assert tables == sorted(p.name for p in out.glob("*.csv")) and tables
    for name in tables:
        ours, theirs = (pd.read_csv(folder / name, dtype=str) for folder in (out, reference))
        if "seconds_per_image" in theirs:
            ours, theirs = (t.drop(columns="seconds_per_image") for t in (ours, theirs))
        if "metric" in theirs:
            ours, theirs = (
                t[t["metric"] != "seconds_per_image"].reset_index(drop=True) for t in (ours, theirs)
            )
        pd.testing.assert_frame_equal(ours, theirs, obj=name)
