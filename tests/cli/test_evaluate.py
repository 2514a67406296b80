"""Generation time in the stores and tables, ROAD and the localisation metrics through the CLI."""

import h5py
import numpy as np
import pandas as pd
import pytest
from box_helpers import voc
from click.testing import CliRunner

from xaibench.cli import cli
from xaibench.data.classes import imagenet_classes
from xaibench.store import open_store

MODEL = "tiny_models:tiny_cnn"
SIZE = (48, 40)  # the fixture's images, width x height


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def generate(data, out, methods="gradcam,gradcampp,random", *extra):
    result = invoke(
        "generate", "--model", MODEL, "--saliency", methods, "--data", data, "--out", out,
        "--batch-size", 4, "--quiet", *extra,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return out / "tiny_models_tiny_cnn"


def evaluate(data, store, out, *extra):
    return invoke(
        "evaluate", "--model", MODEL, "--store", store, "--data", data, "--out", out,
        "--batch-size", 4, "--quiet", *extra,
    )  # fmt: skip


def test_generate_records_seconds_per_image_and_evaluate_carries_them(image_folder, tmp_path):
    runs = generate(image_folder, tmp_path / "runs")
    with open_store(runs / "gradcam.h5") as gradcam, open_store(runs / "gradcampp.h5") as plus:
        assert (gradcam.seconds > 0).all() and np.isfinite(gradcam.seconds).all()
        # one shared CAM pass: both record its time; a batch's rows share one value
        np.testing.assert_array_equal(gradcam.seconds, plus.seconds)
        assert len(np.unique(gradcam.seconds[:4])) == 1
        seconds = gradcam.seconds.copy()
    result = evaluate(image_folder, runs / "gradcam.h5", tmp_path / "m", "--metrics", "increase")
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(tmp_path / "m" / "gradcam-polycam.per_image.csv")
    np.testing.assert_allclose(per_image["seconds_per_image"], seconds, rtol=1e-6)
    summary = pd.read_csv(tmp_path / "m" / "gradcam-polycam.summary.csv").set_index("metric")
    assert summary.loc["seconds_per_image", "mean"] == pytest.approx(seconds.mean(), rel=1e-6)
    assert "seconds_per_image" in result.output


def test_npz_carries_seconds_and_old_stores_read_nan(image_folder, tmp_path):
    runs = generate(image_folder, tmp_path / "runs", "random", "--store", "npz")
    with open_store(runs / "random.npz") as store:
        assert (store.seconds > 0).all()
    old = generate(image_folder, tmp_path / "old", "random")
    with h5py.File(old / "random.h5", "r+") as f:
        del f["seconds"]  # a store written before generation times were recorded
    with open_store(old / "random.h5") as store:
        assert np.isnan(store.seconds).all() and store.complete
    result = evaluate(image_folder, old / "random.h5", tmp_path / "m", "--metrics", "increase")
    assert result.exit_code == 0, result.output
    assert (
        pd.read_csv(tmp_path / "m" / "random-polycam.per_image.csv")["seconds_per_image"]
        .isna()
        .all()
    )


def test_boxes_enable_the_localisation_metrics(image_folder, tmp_path):
    runs = generate(image_folder, tmp_path / "runs", "centre")
    with open_store(runs / "centre.h5") as store:
        targets, ids = store.targets.copy(), list(store.ids)
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    classes = imagenet_classes()
    # images 0-1: a box in the middle, where the centre baseline peaks; 2-3: a corner box;
    # 4: a box of another class; 5: no file
    for i, box in enumerate([(17, 15, 32, 26)] * 2 + [(1, 1, 6, 6)] * 2):
        name = ids[i].rsplit("/", 1)[1].rsplit(".", 1)[0]
        (boxes / f"{name}.xml").write_text(voc([(classes.wnid(int(targets[i])), *box)], SIZE))
    name = ids[4].rsplit("/", 1)[1].rsplit(".", 1)[0]
    other = classes.wnid((int(targets[4]) + 1) % 1000)
    (boxes / f"{name}.xml").write_text(voc([(other, 1, 1, 48, 40)], SIZE))
    refused = CliRunner().invoke(
        cli, ["evaluate", "--model", MODEL, "--store", str(runs / "centre.h5"), "--data",
              str(image_folder), "--metrics", "pointing_game"],
    )  # fmt: skip
    assert refused.exit_code != 0 and "--boxes" in refused.output
    assert "Invalid value for --metrics: pointing_game needs bounding boxes" in refused.output
    result = evaluate(
        image_folder, runs / "centre.h5", tmp_path / "m", "--metrics", "increase", "--boxes", boxes
    )
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(tmp_path / "m" / "centre-polycam.per_image.csv")
    assert per_image["pointing_game"].tolist()[:4] == [1, 1, 0, 0]
    assert per_image["pointing_game"].isna().tolist() == [False] * 4 + [True] * 2
    assert per_image["no_box"].tolist() == [False] * 4 + [True] * 2
    assert (per_image["energy_pointing"][:2] > per_image["energy_pointing"][2:4].max()).all()
    summary = pd.read_csv(tmp_path / "m" / "centre-polycam.summary.csv").set_index("metric")
    assert (
        summary.loc["pointing_game", "count"] == 4 and summary.loc["pointing_game", "missing"] == 2
    )


def test_road_through_evaluate(image_folder, tmp_path):
    runs = generate(image_folder, tmp_path / "runs", "gradinput")
    result = evaluate(
        image_folder, runs / "gradinput.h5", tmp_path / "m", "--limit", 2,
        "--metrics", "road_morf,road_lerf", "--road-percentages", "1,2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stem = "gradinput-polycam(road_percentages=1_2)"
    per_image = pd.read_csv(tmp_path / "m" / f"{stem}.per_image.csv")
    for column in ("road_morf", "road_lerf", "road_morf_1", "road_morf_2", "road_lerf_2"):
        assert per_image[column].between(0, 1).all()
    np.testing.assert_allclose(
        per_image["road_morf"], (per_image["road_morf_1"] + per_image["road_morf_2"]) / 2
    )
    with np.load(tmp_path / "m" / f"{stem}.curves.npz") as curves:
        assert curves["road_lerf"].shape == (2, 2)
