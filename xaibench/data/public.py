"""Public ImageNet subsets that need no account: Imagenette, Imagewoof, ImageNetV2.

Labels are mapped to the 1000-class indices: Imagenette's and Imagewoof's class folders are WNIDs;
ImageNetV2's folders are named 0..999 and are read as integers (folder "10" is class 10, the
eleventh sorted WNID, not the third folder in string order). Only the validation split of the
fast.ai subsets is indexed (it is the one that benchmarks use).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xaibench.core.errors import DataError
from xaibench.data.archives import ARCHIVES, fetch
from xaibench.data.classes import NUM_CLASSES
from xaibench.data.extract import extract_once
from xaibench.data.index import DatasetIndex, write_index


@dataclass(frozen=True)
class PublicDataset:
    """An archive of the table, the image root inside it, and how folders name classes."""

    archive: str
    root: str
    folders: str  # "wnid" or "index"
    expected_per_class: int | None = None


PUBLIC: dict[str, PublicDataset] = {
    "imagenette": PublicDataset("imagenette2", "imagenette2/val", "wnid"),
    "imagenette-320": PublicDataset("imagenette2-320", "imagenette2-320/val", "wnid"),
    "imagenette-160": PublicDataset("imagenette2-160", "imagenette2-160/val", "wnid"),
    "imagewoof": PublicDataset("imagewoof2", "imagewoof2/val", "wnid"),
    "imagewoof-320": PublicDataset("imagewoof2-320", "imagewoof2-320/val", "wnid"),
    "imagewoof-160": PublicDataset("imagewoof2-160", "imagewoof2-160/val", "wnid"),
    "imagenetv2-matched-frequency": PublicDataset(
        "imagenetv2-matched-frequency",
        "imagenetv2-matched-frequency-format-val",
        "index",
        expected_per_class=10,
    ),
}


def index_folder_labels(ids: list[str], root: Path) -> np.ndarray:
    """(N,) int64: the class of each id's top folder, read as an integer 0..999."""
    labels = []
    for image_id in ids:
        top = image_id.split("/", 1)[0]
        if "/" not in image_id or not top.isdigit() or int(top) >= NUM_CLASSES:
            raise DataError(
                f"{root / image_id} is not in a class folder named 0..{NUM_CLASSES - 1}; "
                "pass the extracted ImageNetV2 folder"
            )
        labels.append(int(top))
    return np.array(labels, dtype=np.int64)


def label_images(root: Path, folders: str) -> tuple[list[str], np.ndarray]:
    """Ids under `root` and their class indices, from WNID folders or integer folders."""
    from xaibench.data.dataset import find_images, folder_labels  # imports torch, unlike the rest

    ids = find_images(root)
    if not ids:
        raise DataError(f"no images under {root}; the archive did not extract as expected")
    labels = folder_labels(ids) if folders == "wnid" else index_folder_labels(ids, root)
    return ids, labels


def prepare_public(
    name: str,
    dest: Path,
    url_base: str | None = None,
    given: Path | None = None,
    expected_sha256: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    progress: bool = True,
) -> DatasetIndex:
    """Fetch, verify and extract dataset `name` of `PUBLIC` into `dest`; write its index.

    `url_base` replaces the pinned URL's folder (a mirror); `given` is an archive the user has.
    """
    spec = PUBLIC[name]
    archive = ARCHIVES[spec.archive]
    url = f"{url_base.rstrip('/')}/{archive.filename}" if url_base else archive.url
    dest = Path(dest)
    path = fetch(archive, dest, url, given, expected_sha256, retries, backoff, progress)
    extract_once(path, dest, dest / f".{archive.filename}.extracted", progress=progress)
    ids, labels = label_images(dest / spec.root, spec.folders)
    return write_index(dest, name, dest / spec.root, ids, labels, spec.expected_per_class)
