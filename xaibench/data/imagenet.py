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
`devkit/.extracted` records which devkit archive (size, sha256) was extracted and read, so that
another one is extracted afresh.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from xaibench.core.atomic import write_text_atomic
from xaibench.core.errors import ConfigError, DataError
from xaibench.core.progress import progress_bar
from xaibench.data.archives import ARCHIVES, Archive, fetch, verified_record
from xaibench.data.classes import NUM_CLASSES, imagenet_classes
from xaibench.data.extract import extract_once, safe_extract
from xaibench.data.index import INDEX_FILE, DatasetIndex, write_index

VAL_PER_CLASS = 50
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")
BOX_NAME = re.compile(r"ILSVRC2012_val_\d{8}\.xml")
DEVKIT_FILES = ("meta.mat", "ILSVRC2012_validation_ground_truth.txt")
IMAGENET_KEYS = ("imagenet-val", "imagenet-devkit", "imagenet-val-boxes")


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


SYNSET_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "num_children")
"""The fields of meta.mat's synsets struct that the devkit is read from."""


def _leaf_classes(meta: Path) -> tuple[dict[int, str], dict[str, str]]:
    """devkit ID -> WNID and WNID -> names of the leaf synsets of the devkit's `meta.mat`; a
    DataError naming the file and what was expected when it is not the devkit's."""
    import scipy.io

    expected = (
        f"expected the ILSVRC2012 devkit's meta.mat (MATLAB v5, a synsets struct array with "
        f"fields {', '.join(SYNSET_FIELDS)}); pass the original ILSVRC2012_devkit_t12.tar.gz"
    )
    try:
        if meta.stat().st_size == 0:
            raise DataError(f"{meta} is empty; {expected}")
        contents = scipy.io.loadmat(meta, squeeze_me=True)
    except NotImplementedError:  # scipy's answer to a v7.3 file
        raise DataError(f"{meta} is a MATLAB v7.3 (HDF5) file; {expected}") from None
    except (OSError, ValueError, scipy.io.matlab.MatReadError) as error:
        raise DataError(f"cannot read {meta} ({error}); {expected}") from None
    synsets = contents.get("synsets")
    if synsets is None:
        raise DataError(f"{meta} has no synsets variable; {expected}")
    missing = [name for name in SYNSET_FIELDS if name not in (synsets.dtype.names or ())]
    if missing:
        kind = f"a {synsets.dtype} array" if synsets.dtype.names is None else "a struct"
        raise DataError(f"{meta}: synsets is {kind} without {', '.join(missing)}; {expected}")
    try:
        leaves = [s for s in synsets.reshape(-1) if int(s["num_children"]) == 0]
        wnid_of_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
        names = {str(s["WNID"]): str(s["words"]) for s in leaves}
    except (ValueError, TypeError) as error:
        raise DataError(f"{meta}: synsets has unreadable entries ({error}); {expected}") from None
    return wnid_of_id, names


def read_devkit(folder: Path) -> Devkit:
    """Read `meta.mat` and the ground truth from `folder`; check the classes against the table."""
    folder = Path(folder)
    meta, truth = (folder / name for name in DEVKIT_FILES)
    wnid_of_id, names = _leaf_classes(meta)
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


def extract_devkit(archive: Path, dest: Path) -> Devkit:
    """Extract the devkit `archive` (verified by `fetch` into `dest`) into `dest/devkit` and read it.

    `devkit/.extracted` records the archive (name, size, sha256) once its files are extracted and
    read: with it the archive is not extracted again, and a devkit refused before, or any other
    archive, is extracted afresh.
    """
    folder = Path(dest) / "devkit"
    marker = folder / ".extracted"
    record = json.dumps(verified_record(dest, archive), sort_keys=True)
    if marker.is_file() and marker.read_text("utf-8").strip() == record:
        return read_devkit(folder)
    marker.unlink(missing_ok=True)
    for name in DEVKIT_FILES:  # another archive's files, which extraction would keep by size
        (folder / name).unlink(missing_ok=True)
    safe_extract(archive, dest, _devkit_place, progress=False)
    devkit = read_devkit(folder)
    write_text_atomic(marker, f"{record}\n")
    return devkit


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
    checksums: Mapping[str, str] | None = None,
) -> DatasetIndex:
    """Fetch, verify, extract and arrange ImageNet val into `dest`; write its index. Resumable.

    `given` maps archive keys (`imagenet-val`, `imagenet-devkit`, `imagenet-val-boxes`) to files
    the user has; the others are downloaded from `url_base/<filename>`. `boxes` adds the
    bounding boxes (also when the boxes archive is given). `checksums` (file name -> sha256) are
    the user's own checksums of archives verified by other means (a mirror, a re-packed copy):
    such an archive is checked against them instead of the published size and checksums, and
    dataset.json records them under `user_checksums`.
    """
    dest, given = Path(dest), dict(given or {})
    table = _with_user_checksums(checksums or {})
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
            table[key],
            dest,
            url=f"{url_base.rstrip('/')}/{ARCHIVES[key].filename}" if url_base else None,
            given=given.get(key),
            retries=retries,
            backoff=backoff,
            progress=progress,
        )
        for key in keys
    }
    devkit = extract_devkit(archives["imagenet-devkit"], dest)
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
    index = write_index(
        dest,
        "imagenet-val",
        val,
        [ids[i] for i in order],
        [labels[i] for i in order],
        expected_per_class=per_class,
        class_names=devkit.names,
    )
    used = {a.filename: a.sha256 for k, a in table.items() if k in keys and a != ARCHIVES[k]}
    if used:
        info = json.loads((dest / INDEX_FILE).read_text("utf-8"))
        write_text_atomic(
            dest / INDEX_FILE, json.dumps({**info, "user_checksums": used}, indent=2) + "\n"
        )
    return index


def _with_user_checksums(checksums: Mapping[str, str]) -> dict[str, Archive]:
    """The ImageNet archives by key, each with only the user's sha256 where `checksums` (file name
    -> sha256) has one; ConfigError for a name that is not an ImageNet archive or a bad sha256."""
    table = {key: ARCHIVES[key] for key in IMAGENET_KEYS}
    by_name = {archive.filename: key for key, archive in table.items()}
    for name, sha256 in checksums.items():
        if name not in by_name:
            raise ConfigError(
                f"a checksum is given for {name}, which is not one of {', '.join(by_name)}"
            )
        if not re.fullmatch(r"[0-9a-fA-F]{64}", sha256):
            raise ConfigError(f"the checksum given for {name} is not a sha256: {sha256!r}")
        table[by_name[name]] = Archive(name, sha256=sha256.lower())
    return table
