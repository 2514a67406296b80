"""ImageNet layouts already on disk, recognised and indexed in place (nothing is copied).

Recognised, in this order:
- a folder plus a labels file (`labels`): any layout, labelled by the file (dataset.py's formats);
- Kaggle's ImageNet localisation challenge: `LOC_val_solution.csv` (`ImageId,PredictionString`,
  the first WNID of the prediction string is the class) in the folder or its parents' reach, with
  the images flat in `ILSVRC/Data/CLS-LOC/val/`;
- class folders named by WNID (torchvision's `val/`), in the folder or in its `val/`.
The index written to DEST points to the original images (`dataset.json` holds their absolute
root), so `ImageFolderDataset(ROOT, ..., labels_file=DEST/labels.txt)` reads them where they are.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

from xaibench.core.errors import DataError
from xaibench.data.classes import WNID_PATTERN, imagenet_classes
from xaibench.data.dataset import (
    check_images_present,
    find_images,
    folder_labels,
    read_labels_file,
)
from xaibench.data.index import DatasetIndex, write_index

KAGGLE_CSV = "LOC_val_solution.csv"
KAGGLE_IMAGES = Path("ILSVRC/Data/CLS-LOC/val")


def _kaggle_labels(csv_path: Path) -> dict[str, int]:
    classes = imagenet_classes()
    labels, first_line = {}, {}
    try:
        with open(csv_path, newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.DictReader(handle), 2):
                wnid = (row.get("PredictionString") or "").split()[:1]
                if not row.get("ImageId") or not wnid or not WNID_PATTERN.fullmatch(wnid[0]):
                    raise DataError(
                        f"{csv_path}, line {number}: expected `ImageId,PredictionString` with a "
                        "WNID first"
                    )
                image = f"{row['ImageId']}.JPEG"
                if image in first_line:
                    raise DataError(
                        f"{csv_path}, line {number}: image {row['ImageId']!r} is labelled again "
                        f"(first on line {first_line[image]}); give each image one line"
                    )
                first_line[image] = number
                try:
                    labels[image] = classes.index_of(wnid[0])
                except DataError as error:
                    raise DataError(f"{csv_path}, line {number}: {error}") from None
    except OSError as error:
        raise DataError(f"cannot read {csv_path} ({error})") from None
    return labels


def _has_wnid_folders(folder: Path) -> bool:
    return folder.is_dir() and any(
        p.is_dir() and WNID_PATTERN.fullmatch(p.name) for p in folder.iterdir()
    )


class Layout(NamedTuple):
    """A recognised layout: its name, image root, id -> class index, and the file that gave the
    labels (None when the class folders did, so every labelled image is present)."""

    name: str
    root: Path
    labels: dict[str, int]
    labels_source: Path | None


def detect_layout(source: Path, labels: Path | None = None) -> Layout:
    """The ImageNet layout at `source` (see the module docstring for the order tried)."""
    source = Path(source)
    if not source.exists():
        raise DataError(f"{source} does not exist; pass the folder that holds the images")
    if labels is not None:
        return Layout("folder + labels file", source, read_labels_file(labels), Path(labels))
    csv_path = source if source.name == KAGGLE_CSV else source / KAGGLE_CSV
    if csv_path.is_file():
        root = csv_path.parent / KAGGLE_IMAGES
        if not root.is_dir():
            raise DataError(f"found {csv_path} but not the images folder {root}")
        return Layout("Kaggle LOC_val_solution.csv", root, _kaggle_labels(csv_path), csv_path)
    for root in (source, source / "val"):
        if _has_wnid_folders(root):
            ids = find_images(root)
            by_id = dict(zip(ids, folder_labels(ids).tolist(), strict=True))
            return Layout("WNID class folders", root, by_id, None)
    raise DataError(
        f"{source} is not a layout xaibench recognises: class folders named by WNID "
        f"(torchvision's val/), Kaggle's {KAGGLE_CSV} with {KAGGLE_IMAGES}/, or a folder "
        "with a labels file (`labels`)"
    )


def index_local(source: Path, dest: Path, labels: Path | None = None) -> tuple[str, DatasetIndex]:
    """Index the layout at `source` into `dest` without copying; returns (layout, index)."""
    layout = detect_layout(source, labels)
    root, by_id = layout.root, layout.labels
    if layout.labels_source is not None:
        check_images_present(
            by_id,
            find_images(root),
            f"labels file {layout.labels_source}",
            root,
            "pass the folder that holds them",
        )
    ids = sorted(i for i, label in by_id.items() if label >= 0)
    if not ids:
        raise DataError(f"no labelled images under {root}")
    index = write_index(
        dest, f"local ({layout.name})", root.resolve(), ids, [by_id[i] for i in ids]
    )
    return layout.name, index
