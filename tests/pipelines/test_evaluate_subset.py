"""Evaluating a subset of the images of a store made on the whole folder."""

import numpy as np
import pytest
import torch

from xaibench.core.errors import StoreError
from xaibench.data.dataset import ImageFolderDataset
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.pipelines.evaluate import evaluate_store
from xaibench.pipelines.generate import generate
from xaibench.pipelines.settings import RunSettings

CPU = torch.device("cpu")
MODEL = "tiny_models:tiny_cnn"


def evaluate(store, dataset, loaded):
    return evaluate_store(
        store,
        loaded,
        dataset,
        get_protocol("polycam", step=8000),
        ["insertion", "deletion", "avg_drop"],
        settings=RunSettings.resolve(CPU, batch_size=4, progress=False),
    )


def test_a_subset_evaluates_only_its_images_with_the_values_of_the_whole_run(tiny_run, tmp_path):
    loaded = load_model(MODEL, "default")
    preprocess = get_protocol("polycam").preprocess(loaded.mean, loaded.std, loaded.input_size)
    whole = ImageFolderDataset(tiny_run.data, preprocess)
    store = tiny_run.store("gradcam")  # generated on the whole folder
    chosen = [whole.ids[1], whole.ids[4]]
    subset_file = tmp_path / "subset.txt"
    subset_file.write_text("".join(f"{image_id}\n" for image_id in chosen))
    subset = ImageFolderDataset(tiny_run.data, preprocess, subset_file=subset_file)

    full, part = evaluate(store, whole, loaded), evaluate(store, subset, loaded)

    assert sorted(part.per_image["image_id"]) == sorted(chosen)
    expected = full.per_image.set_index("image_id").loc[part.per_image["image_id"]]
    for column in ("insertion", "deletion", "avg_drop"):
        np.testing.assert_allclose(part.per_image[column], expected[column], rtol=1e-6)


def test_a_subset_sharing_no_image_with_the_store_is_refused(image_folder, tmp_path):
    loaded = load_model(MODEL, "default")
    preprocess = get_protocol("polycam").preprocess(loaded.mean, loaded.std, loaded.input_size)
    whole = ImageFolderDataset(image_folder, preprocess)
    first = tmp_path / "first.txt"
    first.write_text(f"{whole.ids[0]}\n")
    generate(
        loaded,
        ["gradcam"],
        ImageFolderDataset(image_folder, preprocess, subset_file=first),
        tmp_path,
        settings=RunSettings.resolve(CPU, batch_size=4, progress=False),
    )
    other = tmp_path / "other.txt"
    other.write_text(f"{whole.ids[3]}\n")
    with pytest.raises(StoreError, match="none of its images is in the subset"):
        evaluate(
            tmp_path / "tiny_models_tiny_cnn" / "gradcam.h5",
            ImageFolderDataset(image_folder, preprocess, subset_file=other),
            loaded,
        )
