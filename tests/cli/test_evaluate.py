"""`xaibench evaluate` end to end through click's CliRunner: tables, curves and summaries, refusals,
--limit, resuming, generation times, the localisation metrics, ROAD and MC dropout."""

import h5py
import numpy as np
import pandas as pd
import pytest
from box_helpers import voc

from xaibench.core.errors import ConfigError
from xaibench.data.classes import imagenet_classes
from xaibench.store import open_store

MODEL = "tiny_models:tiny_cnn"
SIZE = (48, 40)  # the fixture's images, width x height


@pytest.fixture()
def generate(invoke):
    """`xaibench generate` of `methods` at batch size 4; returns the model's folder of stores."""

    def run(data, out, methods="gradcam,gradcampp,random", *extra, model=MODEL):
        result = invoke(
            "generate", "--model", model, "--saliency", methods, "--data", data, "--out", out,
            "--batch-size", 4, "--quiet", *extra,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        return out / model.replace(":", "_")

    return run


@pytest.fixture()
def evaluate(invoke):
    """`xaibench evaluate` of one store at batch size 4, with `extra` options."""

    def run(data, store, out, *extra):
        return invoke(
            "evaluate", "--model", MODEL, "--store", store, "--data", data, "--out", out,
            "--batch-size", 4, "--quiet", *extra,
        )  # fmt: skip

    return run


def test_generate_records_seconds_per_image_and_evaluate_carries_them(
    image_folder, tmp_path, generate, evaluate
):
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


def test_npz_carries_seconds_and_old_stores_read_nan(image_folder, tmp_path, generate, evaluate):
    runs = generate(image_folder, tmp_path / "runs", "random", "--store", "npz")
    with open_store(runs / "random.npz") as store:
        assert (store.seconds > 0).all()
    old = generate(image_folder, tmp_path / "old", "random")
    with h5py.File(old / "random.h5", "r+") as f:
        del f["seconds"]  # a store written before generation times were recorded,
        del f["checksum"]  # and before rows were checksummed
    with open_store(old / "random.h5") as store:
        assert np.isnan(store.seconds).all() and store.complete
    result = evaluate(image_folder, old / "random.h5", tmp_path / "m", "--metrics", "increase")
    assert result.exit_code == 0, result.output
    assert (
        pd.read_csv(tmp_path / "m" / "random-polycam.per_image.csv")["seconds_per_image"]
        .isna()
        .all()
    )


def test_boxes_enable_the_localisation_metrics(image_folder, tmp_path, generate, evaluate, invoke):
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
    refused = invoke(
        "evaluate", "--model", MODEL, "--store", runs / "centre.h5", "--data", image_folder,
        "--metrics", "pointing_game", catch_exceptions=True,
    )  # fmt: skip
    assert refused.exit_code != 0 and isinstance(refused.exception, ConfigError)
    assert str(refused.exception) == (
        "metrics: pointing_game needs bounding boxes; pass `boxes`, a folder of them"
    )
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


def test_road_through_evaluate(image_folder, tmp_path, generate, evaluate):
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


def test_evaluate_writes_tables_curves_and_a_summary(tiny_run, tmp_path, invoke):
    stores = [a for m in ("tgrad", "random") for a in ("--store", tiny_run.store(m))]
    result = invoke(
        "evaluate",
        "--model",
        MODEL,
        *stores,
        "--data",
        tiny_run.data,
        "--protocol",
        "rise",
        "--quiet",
        "--out",
        tmp_path / "metrics",
    )
    assert result.exit_code == 0, result.output
    assert "| tiny_models:tiny_cnn | tgrad | rise |" in result.output
    per_image = pd.read_csv(tmp_path / "metrics" / "tgrad-rise.per_image.csv")
    assert len(per_image) == 6 and set(per_image["protocol"]) == {"rise"}
    for column in ("insertion", "deletion", "ins_del", "avg_drop", "increase", "clean_score"):
        assert per_image[column].notna().all(), column
    np.testing.assert_allclose(per_image["ins_del"], per_image["insertion"] - per_image["deletion"])
    summary = pd.read_csv(tmp_path / "metrics" / "tgrad-rise.summary.csv")
    metrics = {"insertion", "deletion", "ins_del", "avg_drop", "increase", "seconds_per_image"}
    assert set(summary["metric"]) == metrics
    assert (summary["count"] == 6).all()
    assert '"deletion_substrate": "zeros"' in summary["protocol_settings"].iloc[0]
    with np.load(tmp_path / "metrics" / "tgrad-rise.curves.npz", allow_pickle=False) as curves:
        assert curves["insertion"].shape == (6, 225)  # k = 0..224 under `rise`
        assert "rise" in str(curves["protocol"])


def test_evaluate_refuses_a_store_of_another_model(tiny_run, invoke):
    result = invoke(
        "evaluate", "--model", "resnet18", "--weights", "none", "--store", tiny_run.store("tgrad"),
        "--data", tiny_run.data, catch_exceptions=True,
    )  # fmt: skip
    assert result.exit_code != 0
    assert "model" in str(result.exception) and "tiny_models:tiny_cnn" in str(result.exception)
    # the advice is to evaluate it with what made it, never to delete the user's maps
    assert "evaluate it with the `model`, `weights` and images it was made with" in str(
        result.exception
    )
    assert "delete" not in str(result.exception)


def test_empty_metrics_are_refused(image_folder, invoke):
    result = invoke(
        "evaluate", "--model", MODEL, "--store", "x.h5", "--data", image_folder, "--metrics", "",
        catch_exceptions=True,
    )  # fmt: skip
    assert result.exit_code != 0 and "at least one metric" in result.output


@pytest.fixture()
def evaluate_steps(invoke):
    """`xaibench evaluate` of one store under deletion and avg_drop, steps of 3136 pixels."""

    def run(store, data, out, *extra):
        return invoke(
            "evaluate", "--model", MODEL, "--store", store, "--data", data, "--out", out,
            "--metrics", "deletion,avg_drop", "--step", 3136, "--quiet", *extra,
        )  # fmt: skip

    return run


def test_evaluate_limit_takes_the_first_rows_of_the_store(tiny_run, tmp_path, evaluate_steps):
    store = tiny_run.store("tgrad")
    result = evaluate_steps(store, tiny_run.data, tmp_path / "metrics", "--limit", 2)
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(tmp_path / "metrics" / "tgrad-polycam(step=3136).per_image.csv")
    with open_store(store) as opened:
        assert per_image["image_id"].tolist() == opened.ids[:2]
    assert '"step": 3136' in per_image["protocol_settings"].iloc[0]


def test_an_interrupted_evaluation_resumes_from_its_checkpoint(
    tiny_run, tmp_path, monkeypatch, evaluate_steps
):
    from xaibench.metrics import METRICS

    store, data = tiny_run.store("tgrad"), tiny_run.data
    assert evaluate_steps(store, data, tmp_path / "full").exit_code == 0

    deletion, calls = METRICS.get("deletion"), []
    original = deletion.score_batch

    def die_in_the_second_batch(ctx):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(ctx)

    monkeypatch.setattr(deletion, "score_batch", die_in_the_second_batch)
    assert evaluate_steps(store, data, tmp_path / "resumed", "--batch-size", 4).exit_code != 0
    checkpoint = tmp_path / "resumed" / ".tgrad-polycam(step=3136).checkpoint.npz"
    assert checkpoint.exists()
    with np.load(checkpoint) as saved:
        assert saved["done"].sum() == 4
    monkeypatch.undo()
    assert evaluate_steps(store, data, tmp_path / "resumed", "--batch-size", 4).exit_code == 0
    assert not checkpoint.exists()
    name = "tgrad-polycam(step=3136).per_image.csv"
    full, resumed = pd.read_csv(tmp_path / "full" / name), pd.read_csv(tmp_path / "resumed" / name)
    pd.testing.assert_frame_equal(full, resumed)


def test_evaluate_mc_dropout_adds_mean_and_variance_columns(
    image_folder, tmp_path, generate, invoke
):
    model = "tiny_models:tiny_cnn_dropout"
    store = generate(image_folder, tmp_path / "runs", "random", model=model) / "random.h5"
    args = ["evaluate", "--model", model, "--store", store, "--data", image_folder]
    args += ["--metrics", "avg_drop", "--mc-dropout", 6, "--quiet"]
    result = invoke(*args, "--out", tmp_path / "a")
    assert result.exit_code == 0, result.output
    assert "mc_mean" in result.output and "mc_var" in result.output
    per_image = pd.read_csv(tmp_path / "a" / "random-polycam.per_image.csv")
    assert (per_image["mc_var"] > 0).all()
    assert ((per_image["mc_mean"] > 0) & (per_image["mc_mean"] < 1)).all()
    summary = pd.read_csv(tmp_path / "a" / "random-polycam.summary.csv")
    assert {"mc_mean", "mc_var"} <= set(summary["metric"])
    assert invoke(*args, "--out", tmp_path / "b").exit_code == 0
    again = pd.read_csv(tmp_path / "b" / "random-polycam.per_image.csv")
    pd.testing.assert_series_equal(again["mc_mean"], per_image["mc_mean"])


def test_evaluate_mc_dropout_refuses_a_model_without_dropout(tiny_run, invoke):
    with pytest.raises(ConfigError, match="has no dropout"):
        invoke(
            "evaluate",
            "--model",
            MODEL,
            "--store",
            tiny_run.store("random"),
            "--data",
            tiny_run.data,
            "--mc-dropout",
            4,
        )
