"""A timm model end to end through the CLI (random weights, nothing downloaded): `list models` by
pattern with support verdicts, `generate` with its own preprocessing recorded in the stores, and
`evaluate`, which refuses the store under the other preprocessing."""

import pandas as pd
import pytest

from xaibench.cli import main
from xaibench.store import open_store

MODEL = "timm/test_efficientnet"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run_main(capsys, *args) -> tuple[int, str]:
    """`xaibench ARGS` through the console entry point: (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err


def test_list_models_by_a_timm_pattern_gives_verdicts(invoke):
    table = invoke("list", "models", "timm/test_resnet*")
    lines = table.output.splitlines()
    assert lines[1].split() == ["timm/test_resnet", "160", "exact", "yes", "no", "layer4"]
    assert len(lines) == 3 and "--why" in lines[-1]
    vit = invoke("list", "models", "timm/test_vit", "--why").output
    assert "timm/test_vit (input 160x160)" in vit and "attention" in vit
    names = invoke("list", "models", "timm/test_vit*", "--no-support").output.splitlines()
    assert names[0].split() == ["timm/test_vit", "timm", "test_vit"]


def test_listing_every_timm_model_asks_for_a_pattern(invoke):
    result = invoke("list", "models", "timm/*", catch_exceptions=True)
    assert result.exit_code == 2
    assert "matches" in result.output and "timm models" in result.output
    assert "--no-support" in result.output
    names = invoke("list", "models", "timm/*", "--no-support").output.splitlines()
    assert len(names) > 1000 and "timm/resnet10t" in [line.split()[0] for line in names]
    everything = invoke("list", "models", "--no-support").output.splitlines()
    assert "timm models, timm/NAME" in everything[-1] and "timm/resnet*" in everything[-1]


def test_generate_and_evaluate_a_timm_model_with_its_own_preprocessing(
    image_folder, tmp_path, invoke, capsys
):
    runs = tmp_path / "runs"
    common = ("--model", MODEL, "--weights", "none", "--batch-size", 4, "--quiet")
    generated = invoke(
        "generate", *common, "--saliency", "gradcam,random", "--data", image_folder,
        "--out", runs, "--preprocessing", "model",
    )  # fmt: skip
    assert generated.exit_code == 0, generated.output
    store = runs / "timm_test_efficientnet" / "gradcam.h5"
    with open_store(store) as opened:
        assert opened.meta.model == MODEL and opened.meta.weights == "none"
        assert opened.meta.preprocess == {
            "name": "model", "resize": 168, "crop": 160, "input_size": [160, 160],
            "interpolation": "bicubic", "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        }  # fmt: skip
        assert opened.maps.shape[0] == 6
    evaluate = ("evaluate", *common, "--store", store, "--data", image_folder, "--out", tmp_path)
    metrics = ("--metrics", "insertion,deletion", "--step", 3200)
    code, refused = run_main(capsys, *evaluate, *metrics)
    assert code == 2 and refused.startswith(f"error: --preprocessing: {store} was made with the ")
    assert "model preprocessing" in refused and "evaluate it with --preprocessing model" in refused
    evaluated = invoke(*evaluate, *metrics, "--preprocessing", "model")
    assert evaluated.exit_code == 0, evaluated.output
    per_image = pd.read_csv(tmp_path / "gradcam-polycam(step=3200).per_image.csv")
    assert len(per_image) == 6 and per_image["insertion"].between(0, 1).all()


def test_a_protocol_store_of_a_timm_model_is_refused_under_the_model_preprocessing(
    image_folder, tmp_path, invoke, capsys
):
    common = ("--model", MODEL, "--weights", "none", "--batch-size", 4, "--quiet")
    generated = invoke(
        "generate", *common, "--saliency", "random", "--data", image_folder, "--out", tmp_path
    )
    assert generated.exit_code == 0, generated.output
    store = tmp_path / "timm_test_efficientnet" / "random.h5"
    with open_store(store) as opened:
        assert opened.meta.preprocess["name"] == "polycam"
        assert opened.meta.preprocess["resize"] == [160, 160]
    code, refused = run_main(
        capsys, "evaluate", *common, "--store", store, "--data", image_folder,
        "--metrics", "increase", "--preprocessing", "model",
    )  # fmt: skip
    assert code == 2 and "made with the protocol preprocessing" in refused


def test_a_user_models_stated_values_reach_the_store(image_folder, tmp_path, invoke, capsys):
    result = invoke(
        "generate", "--model", "tiny_models:tiny_cnn", "--saliency", "random", "--data",
        image_folder, "--out", tmp_path, "--quiet", "--mean", "0.5,0.5,0.5", "--std",
        "0.25,0.25,0.25", "--input-size", 48, "--crop", 0.75, "--preprocessing", "model",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "tiny_models_tiny_cnn" / "random.h5") as opened:
        recorded = opened.meta.preprocess
    assert (recorded["resize"], recorded["crop"], recorded["mean"]) == (64, 48, [0.5] * 3)
    resnet = ("generate", "--model", "resnet18", "--weights", "none", "--saliency", "random")
    resnet += ("--data", image_folder, "--out", tmp_path)
    code, bad = run_main(capsys, *resnet, "--mean", "0.5,0.5")
    assert code == 2 and "error: --mean: '0.5,0.5': give 3 comma-separated numbers" in bad
    code, other = run_main(capsys, *resnet, "--crop", 0.9)
    assert code == 2 and other.startswith("error: --crop: resnet18 states its own crop; --mean")
