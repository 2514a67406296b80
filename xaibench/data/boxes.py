"""ImageNet val bounding boxes: Pascal-VOC XML files, mapped through the image's preprocessing.

Layout: one XML file per image, named by the image's stem (`boxes/ILSVRC2012_val_00000001.xml`),
each `object` with a `name` (the WNID) and a `bndbox` (xmin, ymin, xmax, ymax in the original
image's pixels). As in Pascal VOC, the coordinates are taken as inclusive pixel indices counted
from 1, so a box covers [xmin - 1, xmax] x [ymin - 1, ymax] in continuous coordinates, where pixel
(row i, column j) is the unit square [j, j + 1] x [i, i + 1]. A value 0, seen in some files, is
clipped to the image.

Boxes go through the same resize (and centre crop) as the image (`Preprocess`), are clipped to the
result and dropped when nothing of them is left.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image

from xaibench.core.errors import DataError
from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import DECODE_ERRORS, ImageFolderDataset
from xaibench.data.preprocess import Preprocess

COORDINATES = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class ImageBoxes:
    """classes: (K,) int64 class index of each box; boxes: (K, 4) float64 x0, y0, x1, y1 in
    continuous original-image coordinates; size: (width, height) the file states, or None."""

    classes: np.ndarray
    boxes: np.ndarray
    size: tuple[int, int] | None = None


def read_voc_boxes(path: Path) -> ImageBoxes:
    """The boxes of one Pascal-VOC XML file; DataError naming the file and field if it is bad.

    Files declaring a DOCTYPE or entities are refused (the parser would expand them).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(
            f"cannot read box file {path} ({error}); check the `boxes` folder"
        ) from None
    if b"<!DOCTYPE" in raw or b"<!ENTITY" in raw:
        raise DataError(f"box file {path} declares a DOCTYPE or entities; refusing to parse it")
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as error:
        raise DataError(f"box file {path} is not valid XML ({error})") from None
    classes, boxes = [], []
    table = imagenet_classes()
    for number, obj in enumerate(root.iter("object"), 1):
        where = f"box file {path}, object {number}"
        name = (obj.findtext("name") or "").strip()
        try:
            classes.append(table.index_of(name))
            values = [float(obj.findtext(f"bndbox/{c}") or "nan") for c in COORDINATES]
        except (DataError, ValueError) as error:
            raise DataError(f"{where}: {error}") from None
        xmin, ymin, xmax, ymax = values
        if not np.isfinite(values).all() or xmax < xmin or ymax < ymin:
            raise DataError(f"{where}: bndbox needs numbers with xmin <= xmax, ymin <= ymax")
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
    size = None
    width, height = root.findtext("size/width"), root.findtext("size/height")
    if width and height:
        try:
            size = (int(width), int(height))
        except ValueError:
            raise DataError(
                f"box file {path}: size/width and size/height must be whole numbers of pixels, "
                f"got {width!r} and {height!r}"
            ) from None
    return ImageBoxes(np.array(classes, np.int64), np.array(boxes, np.float64).reshape(-1, 4), size)


def resized_size(preprocess: Preprocess, size: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of an image of `size` (width, height) after the preprocessing's resize.

    The same rule as torchvision's resize: an int resizes the shorter side to it and the longer
    side to int(int * long / short).
    """
    if not isinstance(preprocess.resize, int):
        height, width = preprocess.resize
        return width, height
    width, height = size
    short, long = min(width, height), max(width, height)
    new_long = int(preprocess.resize * long / short)
    return (preprocess.resize, new_long) if width <= height else (new_long, preprocess.resize)


def crop_offset(length: int, crop: int) -> int:
    """Where torchvision's centre crop of `crop` starts in a side of `length` (< 0: padding)."""
    if crop > length:
        return -((crop - length) // 2)
    return round((length - crop) / 2.0)


def map_boxes(boxes: np.ndarray, size: tuple[int, int], preprocess: Preprocess) -> np.ndarray:
    """(K, 4) boxes of an image of `size` (width, height) -> (K, 4) boxes in input pixels.

    Scaled by the resize, shifted by the centre crop, clipped to the input; a box with nothing
    left inside the input comes back as NaN.
    """
    new_width, new_height = resized_size(preprocess, size)
    scale = np.array([new_width / size[0], new_height / size[1]] * 2)
    mapped = np.asarray(boxes, np.float64).reshape(-1, 4) * scale
    input_height, input_width = preprocess.input_size
    if preprocess.crop is not None:  # the crop is the input size
        left = crop_offset(new_width, input_width)
        top = crop_offset(new_height, input_height)
        mapped -= np.array([left, top, left, top])
    mapped = mapped.clip(0, [input_width, input_height, input_width, input_height])
    empty = (mapped[:, 2] <= mapped[:, 0]) | (mapped[:, 3] <= mapped[:, 1])
    mapped[empty] = np.nan
    return mapped


class BoxFolder:
    """The boxes of a dataset's images from a folder of XML files named by image stem."""

    def __init__(self, root: str | Path, dataset: ImageFolderDataset):
        self.root = Path(root)
        self.dataset = dataset
        if not self.root.is_dir():
            raise DataError(
                f"box folder {self.root} does not exist; pass the folder of Pascal-VOC XML files "
                "named by image stem (boxes/ILSVRC2012_val_00000001.xml)"
            )

    def path(self, index: int) -> Path:
        return self.root / f"{PurePosixPath(self.dataset.ids[index]).stem}.xml"

    def image_boxes(self, index: int) -> ImageBoxes | None:
        """The boxes of dataset row `index`, or None when it has no box file."""
        path = self.path(index)
        return read_voc_boxes(path) if path.exists() else None

    def class_boxes(self, index: int, target: int) -> np.ndarray:
        """(K, 4) the boxes of class `target` in row `index`'s input pixels (K = 0: none)."""
        found = self.image_boxes(index)
        if found is None or not (found.classes == target).any():
            return np.empty((0, 4))
        size = self._image_size(index)
        if found.size is not None and found.size != size:
            raise DataError(
                f"box file {self.path(index)} is for a {found.size[0]}x{found.size[1]} image, but "
                f"{self.dataset.image_path(index)} is {size[0]}x{size[1]}; check the `boxes` folder"
            )
        mapped = map_boxes(found.boxes[found.classes == target], size, self.dataset.preprocess)
        return mapped[~np.isnan(mapped).any(axis=1)]

    def _image_size(self, index: int) -> tuple[int, int]:
        path = self.dataset.image_path(index)
        try:
            with Image.open(path) as image:
                return image.size
        except DECODE_ERRORS as error:
            raise DataError(f"cannot read the size of image {path} ({error})") from None

    def batch(
        self, indices: np.ndarray, targets: np.ndarray, device: torch.device | str = "cpu"
    ) -> torch.Tensor:
        """(B, K, 4) float32 boxes of each row's class explained, padded with NaN rows."""
        per_image = [
            self.class_boxes(int(i), int(t)) for i, t in zip(indices, targets, strict=True)
        ]
        k = max([len(b) for b in per_image] + [1])
        padded = np.full((len(per_image), k, 4), np.nan, np.float32)
        for row, found in enumerate(per_image):
            padded[row, : len(found)] = found
        return torch.from_numpy(padded).to(device)
