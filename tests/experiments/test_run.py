"""`xaibench run` end to end on a tiny model: the tables of the commands, the manifest, skipping
what is done, re-running what a changed setting affects, refusing a conflicting config."""

import json
from pathlib import Path

import pandas as pd
import pytest

from xaibench.core.errors import ConfigError
from xaibench.experiments.config import load_config
from xaibench.store import open_store

MODEL = "tiny_models:tiny_cnn"
TINY = f"""
[run]
name = "tiny"
device = "cpu"
batch_size = 4

[data]
dataset = "folder"
root = "{{root}}"

[[models]]
name = "{MODEL}"
weights = "none"

[generate]
methods = ["gradient", "random"]

[evaluate]
metrics = ["insertion", "deletion"]
step = 4096

[report]
images = 2
resamples = 99
"""


@pytest.fixture()
def config(tmp_path, image_folder) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY.replace("{root}", str(image_folder)), "utf-8")
    return path


def tables(folder: Path) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_csv(p, dtype=str) for p in sorted(folder.glob("*.csv"))}


def manifest(out: Path) -> dict:
    return json.loads((out / "run.json").read_text("utf-8"))


def test_a_run_writes_the_tables_of_the_commands_with_the_config_digest(
    invoke, config, image_folder, tmp_path
):
    out = tmp_path / "run"
    result = invoke("run", config, "--out", out, "--quiet")
    sha = load_config(config).sha256
    assert f"config_sha256 {sha}" in result.output and "report:" in result.output
    ran = tables(out / "tiny_models_tiny_cnn" / "metrics")
    assert sorted(ran) == [
        f"{m}-polycam(step=4096).{kind}.csv"
        for m in ("gradient", "random")
        for kind in ("per_image", "summary")
    ]
    stores = [out / "tiny_models_tiny_cnn" / f"{m}.h5" for m in ("gradient", "random")]
    by_hand = tmp_path / "by-hand"
    invoke("generate", "--model", MODEL, "--weights", "none", "--saliency", "gradient,random",
           "--data", image_folder, "--out", by_hand, "--batch-size", 4, "--quiet")  # fmt: skip
    invoke("evaluate", "--model", MODEL, "--weights", "none",
           *[a for s in stores for a in ("--store", by_hand / s.parent.name / s.name)],
           "--data", image_folder, "--metrics", "insertion,deletion", "--step", 4096,
           "--batch-size", 4, "--quiet")  # fmt: skip
    expected = tables(by_hand / "tiny_models_tiny_cnn" / "metrics")
    for name, frame in ran.items():
        assert frame.columns[-1] == "config_sha256" and set(frame["config_sha256"]) == {sha}
        # the measured generation time is the one thing two runs do not share
        timing = "seconds_per_image"
        mine, theirs = frame.drop(columns="config_sha256"), expected[name]
        if timing in mine:
            mine, theirs = mine.drop(columns=timing), theirs.drop(columns=timing)
        else:
            mine, theirs = mine[mine.metric != timing], theirs[theirs.metric != timing]
        pd.testing.assert_frame_equal(mine.reset_index(drop=True), theirs.reset_index(drop=True))
    record = manifest(out)
    assert record["config_sha256"] == sha and record["name"] == "tiny"
    assert record["config"]["evaluate"]["protocols"] == ["polycam"]  # defaults written back
    assert {"xaibench", "torch", "torchvision"} <= set(record["versions"])
    assert record["device"] == "cpu"
    assert {s: v["status"] for s, v in record["stages"].items()} == dict.fromkeys(
        ["dataset", "generate", "evaluate", "compare", "report"], "done"
    )
    dataset = record["stages"]["dataset"]["units"]["dataset"]["dataset"]
    assert dataset["images"] == 6 and len(dataset["index_sha256"]) == 64
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["config_sha256"]) == {sha}
    assert (out / "report" / "report.html").is_file()


def test_a_second_run_does_no_work_and_a_changed_setting_reruns_what_follows_it(
    invoke, config, tmp_path
):
    out = tmp_path / "run"
    invoke("run", config, "--out", out, "--quiet")
    store = out / "tiny_models_tiny_cnn" / "gradient.h5"
    written = store.stat().st_mtime_ns
    again = invoke("run", config, "--out", out, "--quiet")
    assert "0 unit(s) run, 7 already done" in again.output
    assert "generate: done, skipped" in again.output
    changed = invoke(
        "run", config, "--out", out, "--quiet", "--set", 'evaluate.metrics=["deletion"]'
    )
    assert "generate: done, skipped" in changed.output
    assert "evaluate: 2 of 2 to do" in changed.output
    assert store.stat().st_mtime_ns == written  # an earlier stage is never re-run
    per_image = pd.read_csv(
        out / "tiny_models_tiny_cnn" / "metrics" / "gradient-polycam(step=4096).per_image.csv"
    )
    assert "deletion" in per_image and "insertion" not in per_image
    assert len(manifest(out)["configs"]) == 2  # both configs that wrote here, by digest
    regenerated = invoke("run", config, "--out", out, "--quiet", "--set", "data.seed=1",
                         "--set", 'evaluate.metrics=["deletion"]')  # fmt: skip
    assert "generate: 2 of 2 to do" in regenerated.output  # the dataset's key changed


def test_another_experiment_with_other_settings_is_refused_naming_the_keys(
    invoke, config, tmp_path
):
    out = tmp_path / "run"
    invoke("run", config, "--out", out, "--quiet")
    before = (out / "run.json").read_text("utf-8")
    with pytest.raises(
        ConfigError, match=r"holds the run 'tiny'.* in: evaluate.step, run.batch_size"
    ):
        invoke("run", config, "--out", out, "--set", "run.name=other", "--set", "evaluate.step=2048",
               "--set", "run.batch_size=2")  # fmt: skip
    assert (out / "run.json").read_text("utf-8") == before


def test_an_invalid_config_writes_nothing(invoke, config, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="unknown method 'gradiant'"):
        invoke("run", config, "--out", out, "--set", 'generate.methods=["gradiant"]')
    assert not out.exists()


def test_dry_run_prints_the_plan_and_what_is_done(invoke, config, tmp_path):
    out = tmp_path / "run"
    plan = invoke("run", config, "--out", out, "--dry-run").output
    assert "[2] generate: 0 of 2 done" in plan
    assert "gradient  " in plan and "6 images x (1 forwards + 1 backwards) = 6 forwards" in plan
    assert "random    " in plan and "6 images x (0 forwards) = 0 forwards" in plan
    # a model of the user's own has no input size on record, so its evaluation's work is unknown
    assert "gradient/polycam    to do      6 images, passes per image unknown" in plan
    assert "forwards to do" in plan and not out.exists()
    invoke("run", config, "--out", out, "--quiet")
    plan = invoke("run", config, "--out", out, "--dry-run").output
    assert "[2] generate: 2 of 2 done" in plan and "forwards to do: at least 0" in plan


def test_several_models_make_one_report_comparing_them(invoke, tmp_path, image_folder):
    second = '[[models]]\nname = "tiny_models:tiny_cnn_dropout"\nweights = "none"\n\n[generate]'
    text = TINY.replace("{root}", str(image_folder)).replace("[generate]", second, 1)
    config = tmp_path / "two.toml"
    config.write_text(text, "utf-8")
    out = tmp_path / "run"
    result = invoke("run", config, "--out", out, "--quiet")
    assert f"report: {out / 'report' / 'report.html'}" in result.output
    report = out / "report"
    folders = ("tiny_models_tiny_cnn", "tiny_models_tiny_cnn_dropout")
    assert sorted(p.name for p in report.glob("saliency-grid*.png")) == [
        f"saliency-grid-{folder}.png" for folder in folders
    ]
    html = (report / "report.html").read_text("utf-8")
    markdown = (report / "report.md").read_text("utf-8")
    for model in ("tiny_models:tiny_cnn", "tiny_models:tiny_cnn_dropout"):
        assert f"{model} | polycam(step=4096) | gradient |" in markdown
        assert model in html
    for folder in folders:
        assert f"{folder}/gradient.h5" in html and f"({folder})" in markdown
    assert not any(p.is_dir() for p in report.iterdir())  # no report per model


def test_dry_run_counts_one_pass_for_cam_methods_sharing_a_layer(invoke, config, tmp_path):
    plan = invoke("run", config, "--out", tmp_path / "run", "--dry-run",
                  "--set", 'models.0.name="resnet18"',
                  "--set", 'generate.methods=["gradcam", "gradcampp", "gradient"]').output  # fmt: skip
    assert "resnet18/gradcam  " in plan and "6 images x (1 forwards + 1 backwards)" in plan
    assert "resnet18/gradcampp" in plan and "6 images, in the pass of resnet18/gradcam" in plan
    generate = plan.split("[2] generate", 1)[1].split("[3]", 1)[0]
    assert generate.count("= 6 forwards") == 2  # gradcam's pass and gradient's


def test_a_run_of_a_timm_model_under_its_own_preprocessing(invoke, config, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    settings = ("--set", "models.0.name=timm/test_resnet", "--set", "generate.preprocessing=model")
    result = invoke("run", config, "--out", out, "--quiet", *settings)
    assert "report:" in result.output
    folder = out / "timm_test_resnet"
    with open_store(folder / "gradient.h5") as store:
        assert store.meta.model == "timm/test_resnet"
        assert store.meta.preprocess["name"] == "model"
        assert (store.meta.preprocess["resize"], store.meta.preprocess["crop"]) == (168, 160)
        assert store.meta.preprocess["mean"] == [0.5] * 3  # its pretrained config's
    assert len(tables(folder / "metrics")) == 4
    recorded = manifest(out)["config"]
    assert recorded["generate"]["preprocessing"] == "model"
