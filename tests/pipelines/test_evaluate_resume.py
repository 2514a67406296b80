"""A resumed evaluation takes from its checkpoint only the results of the same evaluation."""

import logging

import numpy as np
import torch
from box_helpers import voc

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
