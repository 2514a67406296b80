"""The two commands end to end through click's CliRunner, on a tiny model and synthetic images."""

import re

import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from xaibench.cli import cli
from xaibench.data.classes import imagenet_classes
from xaibench.store import open_store

MODEL = "tiny_models:tiny_cnn"


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def generate(data, out, *extra):
    return invoke(
        "generate",
        "--model",
        MODEL,
        "--saliency",
        "tgrad,gradcam,random",
        "--data",
        data,
        "--out",
        out,
        "--batch-size",
        4,
        "--quiet",
        *extra,
    )


def test_generate_writes_one_complete_store_per_method(image_folder, tmp_path):
    result = generate(image_folder, tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "6 images" in result.output and "img/s" in result.output
    for method, shape in [("tgrad", (224, 224)), ("gradcam", (14, 14)), ("random", (224, 224))]:
        with open_store(tmp_path / "runs" / "tiny_models_tiny_cnn" / f"{method}.h5") as store:
            assert store.complete and len(store) == 6
            assert store.meta.method == method and store.meta.model == MODEL
            assert store.read_maps([0]).shape == (1, *shape)
            assert np.isfinite(store.read_maps(np.arange(6))).all()
            assert ((store.scores > 0) & (store.scores <= 1)).all()
            assert store.labels.tolist() == [i * 100 for i in range(6)]


def test_rerun_resumes_and_a_killed_run_equals_an_uninterrupted_one(
    image_folder, tmp_path, monkeypatch
):
    assert generate(image_folder, tmp_path / "full").exit_code == 0

    from xaibench.store.h5 import H5Store

    original, calls = H5Store.write, []

    def write_then_die(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:  # the second batch of the first method
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(H5Store, "write", write_then_die)
    interrupted = generate(image_folder, tmp_path / "resumed")
    assert interrupted.exit_code != 0 and "Aborted" in interrupted.output
    monkeypatch.setattr(H5Store, "write", original)

    result = generate(image_folder, tmp_path / "resumed")
    assert result.exit_code == 0, result.output
    assert "2 images" in result.output  # the second batch only
    for method in ("tgrad", "gradcam", "random"):
        name = f"tiny_models_tiny_cnn/{method}.h5"
        with (
            open_store(tmp_path / "full" / name) as a,
            open_store(tmp_path / "resumed" / name) as b,
        ):
            assert b.complete
            np.testing.assert_allclose(
                b.read_maps(np.arange(6)), a.read_maps(np.arange(6)), rtol=1e-5, atol=1e-7
            )
            np.testing.assert_array_equal(a.targets, b.targets)
    assert "nothing to do" in generate(image_folder, tmp_path / "resumed").output


def test_npz_store_is_keyed_by_file_name(image_folder, tmp_path):
    assert generate(image_folder, tmp_path / "runs", "--store", "npz").exit_code == 0
    path = tmp_path / "runs" / "tiny_models_tiny_cnn" / "tgrad.npz"
    with np.load(path, allow_pickle=False) as archive:
        assert "img0.png" in archive.files and archive["img0.png"].shape == (224, 224)


def test_evaluate_writes_tables_curves_and_a_summary(image_folder, tmp_path):
    runs = tmp_path / "runs"
    assert generate(image_folder, runs).exit_code == 0
    stores = [
        a
        for m in ("tgrad", "random")
        for a in ("--store", runs / "tiny_models_tiny_cnn" / f"{m}.h5")
    ]
    result = invoke(
        "evaluate",
        "--model",
        MODEL,
        *stores,
        "--data",
        image_folder,
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


def test_evaluate_refuses_a_store_of_another_model(image_folder, tmp_path):
    runs = tmp_path / "runs"
    assert generate(image_folder, runs).exit_code == 0
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            "resnet18",
            "--weights",
            "none",
            "--store",
            str(runs / "tiny_models_tiny_cnn" / "tgrad.h5"),
            "--data",
            str(image_folder),
        ],
    )
    assert result.exit_code != 0
    assert "model" in str(result.exception) and "tiny_models:tiny_cnn" in str(result.exception)


def test_corrupt_image_is_named_and_skip_bad_skips_it(image_folder, tmp_path):
    bad = image_folder / imagenet_classes().wnid(0) / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    result = CliRunner().invoke(
        cli,
        [
            "generate",
            "--model",
            MODEL,
            "--saliency",
            "gradcam",
            "--data",
            str(image_folder),
            "--out",
            str(tmp_path / "runs"),
            "--quiet",
        ],
    )
    assert result.exit_code != 0 and "broken.jpg" in str(result.exception)
    result = generate(image_folder, tmp_path / "skipping", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "broken.jpg" in result.output


def test_unknown_method_lists_close_names(image_folder, tmp_path):
    result = CliRunner().invoke(
        cli, ["generate", "--model", MODEL, "--saliency", "tgard", "--data", str(image_folder)]
    )
    assert result.exit_code != 0 and "tgrad" in str(result.exception)


@pytest.mark.parametrize(
    ("what", "expected"),
    [("models", "vgg16"), ("methods", "tgrad"), ("metrics", "avg_drop")],
)
def test_list(what, expected):
    result = invoke("list", what, "vgg*" if what == "models" else "*")
    assert result.exit_code == 0 and expected in result.output


def test_every_command_has_help():
    for command in cli.list_commands(click.Context(cli)):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_library_errors_become_one_line_and_exit_code_2(image_folder, monkeypatch, capsys):
    from xaibench.cli import main

    monkeypatch.setattr(
        "sys.argv",
        [
            "xaibench",
            "generate",
            "--model",
            MODEL,
            "--saliency",
            "gradcm",
            "--data",
            str(image_folder),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and err.startswith("error: unknown method 'gradcm'")
        and "gradcam" in err
    )


def test_readme_documents_every_command():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert readme.lstrip().startswith("# xaibench")
    assert "make demo" in readme and "make test" in readme
    for command in cli.list_commands(click.Context(cli)):
        assert f"xaibench {command}" in readme, command


def evaluate(store, data, out, *extra):
    return invoke(
        "evaluate",
        "--model",
        MODEL,
        "--store",
        store,
        "--data",
        data,
        "--out",
        out,
        "--metrics",
        "deletion,avg_drop",
        "--step",
        3136,
        "--quiet",
        *extra,
    )


def test_skipped_images_complete_the_store_and_evaluate_leaves_them_out(image_folder, tmp_path):
    bad = image_folder / imagenet_classes().wnid(0) / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    result = generate(image_folder, tmp_path / "runs", "--store", "npz", "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "6 images" in result.output and "1 image(s) skipped" in result.output
    store_path = tmp_path / "runs" / "tiny_models_tiny_cnn" / "gradcam.npz"
    with open_store(store_path) as store:
        assert store.complete and len(store) == 7
        row = store.ids.index(f"{imagenet_classes().wnid(0)}/broken.jpg")
        assert store.targets[row] == -1 and np.isnan(store.read_maps([row])).all()
    # the broken file is still there: evaluate never reads the skipped row
    result = evaluate(store_path, image_folder, tmp_path / "metrics")
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(tmp_path / "metrics" / "gradcam-polycam(step=3136).per_image.csv")
    assert len(per_image) == 6 and "broken.jpg" not in " ".join(per_image["image_id"])


def test_evaluate_limit_takes_the_first_rows_of_the_store(image_folder, tmp_path):
    assert generate(image_folder, tmp_path / "runs").exit_code == 0
    store = tmp_path / "runs" / "tiny_models_tiny_cnn" / "tgrad.h5"
    result = evaluate(store, image_folder, tmp_path / "metrics", "--limit", 2)
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(tmp_path / "metrics" / "tgrad-polycam(step=3136).per_image.csv")
    with open_store(store) as opened:
        assert per_image["image_id"].tolist() == opened.ids[:2]
    assert '"step": 3136' in per_image["protocol_settings"].iloc[0]


def test_target_label_explains_the_ground_truth_class(image_folder, tmp_path):
    result = generate(image_folder, tmp_path / "runs", "--target", "label")
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "runs" / "tiny_models_tiny_cnn" / "gradcam.h5") as store:
        assert store.meta.target == "label"
        np.testing.assert_array_equal(store.targets, store.labels)


def test_an_interrupted_evaluation_resumes_from_its_checkpoint(image_folder, tmp_path, monkeypatch):
    from xaibench.metrics import METRICS

    assert generate(image_folder, tmp_path / "runs").exit_code == 0
    store = tmp_path / "runs" / "tiny_models_tiny_cnn" / "tgrad.h5"
    assert evaluate(store, image_folder, tmp_path / "full").exit_code == 0

    deletion, calls = METRICS.get("deletion"), []
    original = deletion.score_batch

    def die_in_the_second_batch(ctx):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(ctx)

    monkeypatch.setattr(deletion, "score_batch", die_in_the_second_batch)
    assert evaluate(store, image_folder, tmp_path / "resumed", "--batch-size", 4).exit_code != 0
    checkpoint = tmp_path / "resumed" / ".tgrad-polycam(step=3136).checkpoint.npz"
    assert checkpoint.exists()
    with np.load(checkpoint) as saved:
        assert saved["done"].sum() == 4
    monkeypatch.undo()
    assert evaluate(store, image_folder, tmp_path / "resumed", "--batch-size", 4).exit_code == 0
    assert not checkpoint.exists()
    name = "tgrad-polycam(step=3136).per_image.csv"
    full, resumed = pd.read_csv(tmp_path / "full" / name), pd.read_csv(tmp_path / "resumed" / name)
    pd.testing.assert_frame_equal(full, resumed)


def test_duplicate_methods_and_empty_metrics_are_refused(image_folder, tmp_path):
    result = CliRunner().invoke(
        cli,
        ["generate", "--model", MODEL, "--saliency", "random,random", "--data", str(image_folder)],
    )
    assert result.exit_code != 0 and "twice" in str(result.exception)
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            MODEL,
            "--store",
            "x.h5",
            "--data",
            str(image_folder),
            "--metrics",
            "",
        ],
    )
    assert result.exit_code != 0 and "at least one metric" in result.output


def test_method_settings_reach_the_methods_and_the_store(image_folder, tmp_path):
    result = invoke(
        "generate",
        "--model",
        MODEL,
        "--saliency",
        "random,rise",
        "--data",
        image_folder,
        "--out",
        tmp_path,
        "--param",
        "random.resolution=7",
        "--param",
        "masks=16",
        "--param",
        "rise.cell=4",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "tiny_models_tiny_cnn" / "random.h5") as store:
        assert store.read_maps([0]).shape == (1, 7, 7)
        assert store.meta.method_params["resolution"] == 7
    with open_store(tmp_path / "tiny_models_tiny_cnn" / "rise.h5") as store:
        assert store.meta.method_params["masks"] == 16 and store.meta.method_params["cell"] == 4


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("random.masks=3", "random has no setting 'masks'"),
        ("tgrad.layer=x", "tgrad is not among --saliency"),
        ("colour=red", "none of random takes 'colour'"),
        ("resolution", "write [METHOD.]KEY=VALUE"),
    ],
)
def test_bad_method_settings_are_named(setting, message):
    from xaibench.core.errors import ConfigError
    from xaibench.methods.settings import method_params

    with pytest.raises(ConfigError, match=re.escape(message)):
        method_params(["random"], (setting,))


def test_layer_is_a_module_name_for_every_method_that_takes_one():
    from xaibench.core.errors import ConfigError
    from xaibench.methods.settings import method_params

    chosen = method_params(["gradcam", "random", "layercam"], ("gradcam.layer=1",), "3")
    assert chosen == {"gradcam": {"layer": "3"}, "layercam": {"layer": "3"}}
    chosen = method_params(["gradcam", "scorecam"], ("gradcam.layer=2", "scorecam.channel_batch=4"))
    assert chosen == {"gradcam": {"layer": "2"}, "scorecam": {"channel_batch": 4}}
    with pytest.raises(ConfigError, match=re.escape("--layer 3: none of random takes a layer")):
        method_params(["random"], (), "3")


@pytest.mark.parametrize("command", ["generate", "sanity", "explain"])
def test_a_bad_param_fails_before_the_model_loads(command, image_folder, tmp_path, monkeypatch):
    from xaibench.core.errors import ConfigError

    monkeypatch.setattr(
        "xaibench.models.load_model", lambda *a, **k: pytest.fail("loaded the model")
    )
    image = next(p for p in image_folder.rglob("*") if p.is_file())
    where = [str(image)] if command == "explain" else ["--data", str(image_folder)]
    args = [command, *where, "--model", MODEL, "--saliency", "gradcam", "--param", "gradcam.x=1"]
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, ConfigError)
    assert "gradcam has no setting 'x'" in str(result.exception)
