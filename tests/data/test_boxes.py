"""Bounding boxes: reading VOC XML safely, and mapping boxes through resize and centre crop."""

import numpy as np
import pytest
import torch
from box_helpers import voc
from PIL import Image

from xaibench.core.errors import DataError
from xaibench.data.boxes import BoxFolder, map_boxes, read_voc_boxes
from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import ImageFolderDataset
from xaibench.data.preprocess import Preprocess
from xaibench.metrics import near_boxes

PLAIN = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def test_read_voc_boxes(tmp_path):
    wnids = imagenet_classes().wnids
    path = tmp_path / "a.xml"
    path.write_text(voc([(wnids[3], 11, 5, 40, 30), (wnids[7], 1, 1, 2, 2)], size=(50, 40)))
    found = read_voc_boxes(path)
    assert found.classes.tolist() == [3, 7] and found.size == (50, 40)
    np.testing.assert_array_equal(found.boxes, [[10, 4, 40, 30], [0, 0, 2, 2]])


@pytest.mark.parametrize(
    "text, message",
    [
        ('<!DOCTYPE a [<!ENTITY x "y">]><annotation/>', "DOCTYPE"),
        ("<annotation><object>", "not valid XML"),
        (voc([("n99999999", 1, 1, 2, 2)]), "not one of the 1000"),
        (voc([("n01440764", 5, 1, 2, 2)]), "xmin <= xmax"),
        (
            voc([("n01440764", 1, 1, 2, 2)], size=(50, 40)).replace("<width>50", "<width>50.5"),
            "whole numbers of pixels",
        ),
    ],
)
def test_bad_box_files_are_named(tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        read_voc_boxes(path)
    assert "bad.xml" in str(error.value)


def test_direct_resize_scales_each_axis():
    mapped = map_boxes(np.array([[10.0, 0, 30, 20]]), (80, 40), Preprocess(resize=(20, 40)))
    np.testing.assert_array_equal(mapped, [[5, 0, 15, 10]])


def test_shorter_side_resize_and_centre_crop():
    """50 x 40 -> shorter side 20: 25 x 20; crop 16 starts at round(4.5) = 4, round(2) = 2."""
    preprocess = Preprocess(resize=20, crop=16)
    boxes = np.array([[10.0, 4, 40, 30], [0, 0, 6, 40], [30, 30, 50, 40]])
    mapped = map_boxes(boxes, (50, 40), preprocess)
    np.testing.assert_array_equal(mapped[0], [1, 0, 16, 13])
    assert np.isnan(mapped[1]).all()  # left of the crop: nothing left
    np.testing.assert_array_equal(mapped[2], [11, 13, 16, 16])  # clipped to the crop


@pytest.mark.parametrize(
    "preprocess",
    [
        Preprocess(resize=20, crop=16, **PLAIN),
        Preprocess(resize=(20, 25), **PLAIN),
        Preprocess(resize=(20, 25), crop=(16, 18), **PLAIN),  # timm's squash: a rectangular crop
    ],
)
def test_mapped_box_covers_the_preprocessed_rectangle(preprocess):
    """A white rectangle drawn where the box is lands, after preprocessing, where the mapped box
    says (scale 1/2, so the rectangle's edges fall on pixel edges)."""
    pixels = np.zeros((40, 50, 3), np.uint8)
    pixels[4:30, 10:40] = 255  # VOC box xmin=11, ymin=5, xmax=40, ymax=30
    image = preprocess(Image.fromarray(pixels))[0]
    box = map_boxes(np.array([[10.0, 4, 40, 30]]), (50, 40), preprocess)
    inside = near_boxes(torch.tensor(box)[None], tuple(image.shape))[0]
    assert torch.equal(image > 0.5, inside)


def test_box_folder_gives_the_boxes_of_the_class_explained(tmp_path):
    classes = imagenet_classes()
    root = tmp_path / "val" / classes.wnid(5)
    root.mkdir(parents=True)
    for name in ("ILSVRC2012_val_00000001", "ILSVRC2012_val_00000002"):
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / f"{name}.png")
    boxes = tmp_path / "boxes"
    boxes.mkdir()
    (boxes / "ILSVRC2012_val_00000001.xml").write_text(
        voc([(classes.wnid(5), 11, 5, 40, 30), (classes.wnid(6), 1, 1, 50, 40)], size=(50, 40))
    )
    dataset = ImageFolderDataset(tmp_path / "val", Preprocess(resize=20, crop=16))
    folder = BoxFolder(boxes, dataset)
    batch = folder.batch(np.array([0, 1, 0]), np.array([5, 5, 9]))
    assert batch.shape == (3, 1, 4)
    np.testing.assert_array_equal(batch[0, 0].numpy(), [1, 0, 16, 13])
    assert torch.isnan(batch[1:]).all()  # no file; no box of class 9
    (boxes / "ILSVRC2012_val_00000002.xml").write_text(
        voc([(classes.wnid(5), 1, 1, 2, 2)], size=(60, 40))
    )
    with pytest.raises(DataError, match="60x40 image"):
        folder.batch(np.array([1]), np.array([5]))
    with pytest.raises(DataError, match="does not exist"):
        BoxFolder(tmp_path / "nowhere", dataset)
