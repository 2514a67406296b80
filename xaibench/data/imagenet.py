"""ImageNet (ILSVRC2012) validation: devkit labels, arrangement into WNID folders, bounding boxes.

`data/ILSVRC2012_validation_ground_truth.txt` holds on line i the devkit ID of
`ILSVRC2012_val_{i:08d}.JPEG`; `data/meta.mat` maps devkit IDs to WNIDs (its `synsets` struct has
ILSVRC2012_ID, WNID, words, num_children, ...; the 1000 classes are the leaves, num_children == 0).
The class index is the position of the WNID among the 1000 sorted WNIDs, not devkit ID - 1
(devkit ID 1 is n02119789, index 278).

Layout written under DEST:

    ILSVRC2012_img_val.tar ...          the verified archives (unless the user has them: `given`)
    devkit/meta.mat, devkit/ILSVRC2012_validation_ground_truth.txt
    val/<WNID>/ILSVRC2012_val_XXXXXXXX.JPEG   50 per class
    boxes/ILSVRC2012_val_XXXXXXXX.xml  with the bounding-box archive: Pascal VOC, one per image
    dataset.json image_list.txt labels.txt classes.tsv   (xaibench.data.index)

Extraction writes `val/.extracted` when the image tar is fully extracted (`boxes/.extracted` for
the boxes), arrangement `val/.arranged` when every image is in its folder: a killed run is
completed by the next one (moves are idempotent: an image already in its folder is left there).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xaibench.core.atomic import write_text_atomic
from xaibench.core.errors import ConfigError, DataError
from xaibench.core.progress import progress_bar
from xaibench.data.archives import ARCHIVES, fetch
from xaibench.data.classes import NUM_CLASSES, imagenet_classes
from xaibench.data.extract import extract_once
from xaibench.data.index import DatasetIndex, write_index

VAL_PER_CLASS = 50
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
BOX_NAME = re.compile(r"ILSVRC2012_val_\d{8}\.xml")
DEVKIT_FILES = ("meta.mat", "ILSVRC2012_validation_ground_truth.txt")


def val_name(number: int) -> str:
    """`ILSVRC2012_val_00000001.JPEG` for number 1 (numbers start at 1)."""
    return f"ILSVRC2012_val_{number:08d}.JPEG"


@dataclass(frozen=True)
class Devkit:
    """What the devkit says: devkit ID -> WNID and names of the 1000 leaves, and per-image IDs."""

    wnid_of_id: dict[int, str]
    names: dict[str, str]
    ground_truth: list[int]

    def image_wnids(self) -> list[str]:
        """The WNID of image i + 1 at position i."""
        return [self.wnid_of_id[i] for i in self.ground_truth]


def read_devkit(folder: Path) -> Devkit:
    """Read `meta.mat` and the ground truth from `folder`; check the classes against the table."""
    import scipy.io

    folder = Path(folder)
    meta, truth = (folder / name for name in DEVKIT_FILES)
    try:
        synsets = scipy.io.loadmat(meta, squeeze_me=True)["synsets"]
        leaves = [s for s in synsets if int(s["num_children"]) == 0]
        wnid_of_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
        names = {str(s["WNID"]): str(s["words"]) for s in leaves}
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise DataError(
            f"cannot read the devkit's {meta} ({error}); pass the original "
            "ILSVRC2012_devkit_t12.tar.gz"
        ) from None
    if sorted(wnid_of_id.values()) != imagenet_classes().wnids:
        raise DataError(
            f"{meta} lists {len(wnid_of_id)} leaf classes that are not the 1000 ImageNet-1k "
            "WNIDs of xaibench/data/imagenet_classes.tsv; pass the ILSVRC2012 devkit"
        )
    try:
        lines = truth.read_text("utf-8").split()
        ground_truth = [int(line) for line in lines]
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read {truth} ({error}); pass the original devkit") from None
    unknown = sorted(set(ground_truth) - set(wnid_of_id))
    if unknown:
        raise DataError(f"{truth} has devkit IDs that are not classes, e.g. {unknown[0]}")
    return Devkit(wnid_of_id, names, ground_truth)


def _devkit_place(name: str) -> str | None:
    path = PurePosixPath(name)
    if path.parent.name == "data" and path.name in DEVKIT_FILES:
        return f"devkit/{path.name}"
    return None


def _val_place(name: str) -> str | None:
    base = PurePosixPath(name).name
    return f"val/{base}" if VAL_NAME.fullmatch(base) else None


def _box_place(name: str) -> str | None:
    base = PurePosixPath(name).name
    return f"boxes/{base}" if BOX_NAME.fullmatch(base) else None


def arrange_val(folder: Path, wnids: Sequence[str], progress: bool = True) -> None:
    """Move `folder/ILSVRC2012_val_{i:08d}.JPEG` to `folder/<wnids[i-1]>/`; resumable.

    Before any move, the images present (flat or in a folder) must be exactly numbers
    1..len(wnids): a ground truth that does not fit the images is an error. Writes
    `folder/.arranged` when done.
    """
    folder = Path(folder)
    marker = folder / ".arranged"
    if marker.exists():
        return
    present = set()
    for path in [*folder.glob("*.JPEG"), *folder.glob("n*/*.JPEG")]:
        match = VAL_NAME.fullmatch(path.name)
        if match:
            present.add(int(match.group(1)))
    expected = set(range(1, len(wnids) + 1))
    if present != expected:
        extra, missing = sorted(present - expected), sorted(expected - present)
        raise DataError(
            f"the ground truth has {len(wnids)} lines but {folder} holds {len(present)} "
            f"validation images ({len(missing)} missing, first {missing[:1]}; {len(extra)} "
            f"without a label, first {extra[:1]}); pass the devkit and image archive of the "
            "same release"
        )
    for wnid in sorted(set(wnids)):
        (folder / wnid).mkdir(exist_ok=True)
    for number, wnid in enumerate(
        progress_bar(wnids, desc="arranging", unit="img", disable=not progress), 1
    ):
        name = val_name(number)
        placed = folder / wnid / name
        if not placed.exists():
            os.replace(folder / name, placed)
    write_text_atomic(marker, f"{len(wnids)}\n")


def prepare_imagenet_val(
    dest: Path,
    url_base: str | None = None,
    given: dict[str, Path] | None = None,
    boxes: bool = False,
    retries: int = 5,
    backoff: float = 1.0,
    progress: bool = True,
) -> DatasetIndex:
    """Fetch, verify, extract and arrange ImageNet val into `dest`; write its index. Resumable.

    `given` maps archive keys (`imagenet-val`, `imagenet-devkit`, `imagenet-val-boxes`) to files
    the user has; the others are downloaded from `url_base/<filename>`. `boxes` adds the
    bounding boxes (also when the boxes archive is given).
    """
    dest, given = Path(dest), dict(given or {})
    keys = ["imagenet-devkit", "imagenet-val"]
    if boxes or "imagenet-val-boxes" in given:
        keys.append("imagenet-val-boxes")
    missing = [ARCHIVES[k].filename for k in keys if k not in given]
    if missing and url_base is None and not all((dest / m).is_file() for m in missing):
        raise ConfigError(
            "ImageNet needs an account at image-net.org, so xaibench cannot download it on its "
            f"own: download {' and '.join(missing)} there and pass each with `given`, or give "
            "`url_base` (or set XAIBENCH_IMAGENET_URL), a server that holds them"
        )
    archives = {
        key: fetch(
            ARCHIVES[key],
            dest,
            url=f"{url_base.rstrip('/')}/{ARCHIVES[key].filename}" if url_base else None,
            given=given.get(key),
            retries=retries,
            backoff=backoff,
            progress=progress,
        )
        for key in keys
    }
    devkit_marker = dest / "devkit" / ".extracted"
    extract_once(archives["imagenet-devkit"], dest, devkit_marker, _devkit_place, progress=False)
    devkit = read_devkit(dest / "devkit")
    val = dest / "val"
    if not (val / ".arranged").exists():
        extract_once(archives["imagenet-val"], dest, val / ".extracted", _val_place, progress)
        arrange_val(val, devkit.image_wnids(), progress)
    if "imagenet-val-boxes" in archives:
        marker = dest / "boxes" / ".extracted"
        extract_once(archives["imagenet-val-boxes"], dest, marker, _box_place, progress)
    wnids = devkit.image_wnids()
    classes = imagenet_classes()
    ids = [f"{w}/{val_name(i)}" for i, w in enumerate(wnids, 1)]
    labels = [classes.index_of(w) for w in wnids]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    per_class = VAL_PER_CLASS if len(ids) == VAL_PER_CLASS * NUM_CLASSES else None
    return write_index(
        dest,
        "imagenet-val",
        val,
        [ids[i] for i in order],
        [labels[i] for i in order],
        expected_per_class=per_class,
        class_names=devkit.names,
    )
