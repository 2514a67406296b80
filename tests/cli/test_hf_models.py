"""A Hugging Face classifier end to end through the CLI (a tiny random ViT that save_pretrained wrote
into a folder and a fake hub cache; nothing downloaded): `list models 'hf/*'`, `generate` under
its image processor's preprocessing, recorded in the stores, `evaluate` of those stores."""

import shutil

import pandas as pd
import pytest

from xaibench.models import hf_models
from xaibench.store import open_store

transformers = pytest.importorskip("transformers")
REVISION = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hugging Face hub cache in `tmp_path` holding `someone/tiny-vit`, a ViT at 32 x 32
    (1000 classes) whose processor resizes to 40 x 40, crops 32 and normalises by its own
    statistics: the snapshot's folder."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hf_models.hf_spec.cache_clear()
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=1000,
    )  # fmt: skip
    entry = tmp_path / "hf" / "models--someone--tiny-vit"
    snapshot = entry / "snapshots" / REVISION
    transformers.ViTForImageClassification(config).save_pretrained(snapshot)
    transformers.DeiTImageProcessorPil(
        size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32},
        image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4],
    ).save_pretrained(snapshot)  # fmt: skip
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(REVISION)
    yield snapshot
    hf_models.hf_spec.cache_clear()


def test_list_models_reads_the_hub_cache(hub, invoke):
    table = invoke("list", "models", "hf/*").output.splitlines()
    assert table[1].split()[:2] == ["hf/someone/tiny-vit", "32"]
    assert table[1].split()[-1] == "vit.layers.1.layernorm_before"
    why = invoke("list", "models", "hf/someone/tiny-vit", "--why").output
    assert "hf/someone/tiny-vit (input 32x32)" in why
    everything = invoke("list", "models", "--no-support").output.splitlines()
    assert "hf/MODEL_ID: 1 in the local hub cache" in everything[-2]
    shutil.rmtree(hub.parents[1])
    assert (
        "hf/MODEL_ID: 0 in the local hub cache"
        in invoke("list", "models", "--no-support").output.splitlines()[-2]
    )


def test_generate_and_evaluate_with_the_image_processors_preprocessing(
    hub, image_folder, tmp_path, invoke
):
    runs = tmp_path / "runs"
    common = ("--model", "hf/someone/tiny-vit", "--batch-size", 4, "--quiet")
    generated = invoke(
        "generate", *common, "--saliency", "gradcam,rollout", "--data", image_folder,
        "--out", runs, "--preprocessing", "model",
    )  # fmt: skip
    assert generated.exit_code == 0, generated.output
    store = runs / "hf_someone_tiny-vit" / "gradcam.h5"
    with open_store(store) as opened:
        meta = opened.meta
        assert meta.model == "hf/someone/tiny-vit"
        assert meta.weights == f"hf-hub:someone/tiny-vit@{REVISION}"
        assert meta.preprocess == {
            "name": "model", "resize": [40, 40], "crop": 32, "input_size": [32, 32],
            "interpolation": "bicubic", "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.4],
        }  # fmt: skip
        assert opened.maps.shape[0] == 6
    evaluated = invoke(
        "evaluate", *common, "--store", store, "--data", image_folder, "--out", tmp_path,
        "--metrics", "insertion,deletion", "--step", 256, "--preprocessing", "model",
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    per_image = pd.read_csv(next(tmp_path.glob("gradcam-*.per_image.csv")))
    assert len(per_image) == 6 and per_image["deletion"].between(0, 1).all()
