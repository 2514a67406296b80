"""The in-memory API: `xaibench.explain` then `xaibench.score` give what `generate` and
`evaluate` give for the same images and maps."""

import numpy as np
import pandas as pd
import pytest
import torch

import xaibench
from xaibench.core.errors import ConfigError
from xaibench.data.dataset import ImageFolderDataset
from xaibench.data.samples import build_sample_dataset
from xaibench.methods import METHODS
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.store import open_store

METRICS = ["insertion", "deletion", "ins_del", "avg_drop", "increase"]
TINY = "tiny_models:tiny_cnn"
STEP = 224 * 14
"""Pixels per insertion/deletion step: 16 steps at 224 x 224."""


def dataset_images(data, loaded) -> tuple[torch.Tensor, list[str]]:
    preprocess = get_protocol("polycam").preprocess(loaded.mean, loaded.std, loaded.input_size)
    dataset = ImageFolderDataset(data, preprocess)
    return torch.stack([dataset[i][0] for i in range(len(dataset))]), dataset.ids


@pytest.mark.slow
def test_scores_equal_evaluates_for_the_same_maps_on_lite0(tmp_path, invoke):
    data = build_sample_dataset(tmp_path / "data")
    runs, metrics = tmp_path / "runs", tmp_path / "metrics"
    generated = invoke(
        "generate", "--model", "efficientnet_lite0", "--saliency", "gradcam", "--data", data,
        "--out", runs, "--batch-size", 3, "--quiet",
    )  # fmt: skip
    assert generated.exit_code == 0, generated.output
    store_path = runs / "efficientnet_lite0" / "gradcam.h5"
    evaluated = invoke(
        "evaluate", "--model", "efficientnet_lite0", "--store", store_path, "--data", data,
        "--metrics", ",".join(METRICS), "--step", STEP, "--out", metrics, "--quiet",
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    protocol = get_protocol("polycam", step=STEP)
    table = pd.read_csv(metrics / f"gradcam-{protocol.name}.per_image.csv")

    loaded = load_model("efficientnet_lite0")
    images, ids = dataset_images(data, loaded)
    with open_store(store_path) as store:
        assert list(store.ids) == ids
        maps, targets = store.read_maps(np.arange(len(store))), store.targets.copy()
    scores = xaibench.score(loaded.model, images, maps, targets, METRICS, protocol, batch_size=4)
    assert list(scores["image"]) == list(range(len(ids)))
    assert (scores["target"].to_numpy() == table["target"].to_numpy()).all()
    for column in ["clean_score", *METRICS]:
        np.testing.assert_allclose(scores[column], table[column], rtol=0, atol=1e-6)

    explanation = xaibench.explain(loaded.model, images, "gradcam")
    assert (explanation.targets.numpy() == targets).all()
    np.testing.assert_allclose(explanation.maps.numpy(), maps, rtol=0, atol=1e-5)


def test_score_takes_maps_of_other_libraries_shapes():
    loaded = load_model(TINY)
    images = torch.randn(5, 3, 32, 32)
    explanation = xaibench.explain(loaded.model, images, "gradient")
    maps = explanation.maps
    as_tensor = xaibench.score(loaded.model, images, maps, explanation.targets, ["deletion"])
    as_channel = xaibench.score(  # Captum's layer attributions: (B, 1, h, w)
        loaded.model, images, maps[:, None], explanation.targets, ["deletion"], batch_size=2
    )
    as_array = xaibench.score(  # pytorch-grad-cam's: an array, targets a list
        loaded.model, images, maps.numpy(), explanation.targets.tolist(), ["deletion"]
    )
    pd.testing.assert_frame_equal(as_tensor, as_channel)
    pd.testing.assert_frame_equal(as_tensor, as_array)
    assert len(as_tensor) == 5 and as_tensor["deletion"].between(0, 1).all()


def test_explain_is_the_registered_method_with_its_settings():
    loaded = load_model(TINY)
    images = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([3, 7])
    loaded.model.train()
    explanation = xaibench.explain(loaded.model, images, "gradcam", targets, layer="3")
    xaibench.score(loaded.model, images, explanation.maps, targets, ["avg_drop"])
    assert loaded.model.training  # eval mode for the calls only
    direct = METHODS.get("gradcam")(loaded.model.eval(), layer="3")(images, targets)
    torch.testing.assert_close(explanation.maps, direct.maps, rtol=0, atol=0)
    assert explanation.targets.tolist() == [3, 7]


def test_bad_input_is_refused_naming_what_to_give():
    loaded = load_model(TINY)
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(ConfigError, match="no setting 'layr'"):
        xaibench.explain(loaded.model, images, "gradcam", layr="3")
    with pytest.raises(ConfigError, match=r"reduce channel maps first"):
        xaibench.score(loaded.model, images, torch.rand(2, 3, 8, 8), [0, 1])
    with pytest.raises(ConfigError, match="targets: give one per image"):
        xaibench.score(loaded.model, images, torch.rand(2, 8, 8), [0, 1, 2])
    with pytest.raises(ConfigError, match="need bounding boxes"):
        xaibench.score(loaded.model, images, torch.rand(2, 8, 8), [0, 1], ["pointing_game"])
