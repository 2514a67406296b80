"""The index files a prepared dataset folder holds, and reproducible subsets of it.

`DEST/dataset.json` names the image root (relative to DEST, or absolute for a layout indexed in
place) and what verify should expect; next to it:
- `image_list.txt`: one image id per line (the path relative to the root, as the dataset reads it);
- `labels.txt`: `<id> <index> <WNID>` lines, readable as `labels_file`;
- `classes.tsv`: `index  wnid  names` of the 1000 classes, keyed by WNID;
- `subset-N-seedS.txt`: a subset in the labels format, readable as `subset_file`.
Every file is written under a temporary name and renamed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xaibench.core.atomic import write_text_atomic
from xaibench.core.errors import ConfigError, DataError
from xaibench.data.classes import NUM_CLASSES, imagenet_classes

INDEX_FILE = "dataset.json"


@dataclass(frozen=True)
class DatasetIndex:
    """A prepared dataset: image `root`, `ids` (N,), `labels` (N,) int64, and expectations."""

    name: str
    root: Path
    ids: list[str]
    labels: np.ndarray
    expected_per_class: int | None = None
    labels_file: Path | None = None


def write_index(
    dest: Path,
    name: str,
    root: Path,
    ids: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    expected_per_class: int | None = None,
    class_names: dict[str, str] | None = None,
) -> DatasetIndex:
    """Write the index files of `ids` under `root` into `dest` (see the module docstring).

    `class_names` (WNID -> names, e.g. from the devkit) replaces the shipped names in classes.tsv.
    """
    dest, root = Path(dest), Path(root)
    classes = imagenet_classes()
    labels = np.asarray(labels, dtype=np.int64)
    if (labels < 0).any():
        first = ids[int(np.flatnonzero(labels < 0)[0])]
        raise DataError(f"image {root / first} has no class; cannot index {name}")
    dest.mkdir(parents=True, exist_ok=True)
    write_text_atomic(dest / "image_list.txt", "".join(f"{i}\n" for i in ids))
    write_text_atomic(
        dest / "labels.txt",
        "".join(
            f"{i} {label} {classes.wnid(label)}\n" for i, label in zip(ids, labels, strict=True)
        ),
    )
    names = class_names or {}
    write_text_atomic(
        dest / "classes.tsv",
        "index\twnid\tnames\n"
        + "".join(
            f"{k}\t{w}\t{names.get(w, classes.names(k))}\n" for k, w in enumerate(classes.wnids)
        ),
    )
    resolved, home = root.resolve(), dest.resolve()
    stored = resolved.relative_to(home) if home in resolved.parents else resolved
    info = {
        "name": name,
        "root": stored.as_posix(),
        "images": len(ids),
        "expected_per_class": expected_per_class,
    }
    write_text_atomic(dest / INDEX_FILE, json.dumps(info, indent=2) + "\n")
    return DatasetIndex(name, root, list(ids), labels, expected_per_class, dest / "labels.txt")


def read_index(dest: Path) -> DatasetIndex:
    """The index written by `write_index` into `dest`; DataError naming the file if it is broken."""
    from xaibench.data.dataset import read_labels_file  # imports torch, which this module does not

    dest = Path(dest)
    path = dest / INDEX_FILE
    try:
        info = json.loads(path.read_text("utf-8"))
        root = Path(info["root"])
        root = root if root.is_absolute() else dest / root
        by_id = read_labels_file(dest / "labels.txt")
    except (OSError, ValueError, KeyError) as error:
        raise DataError(
            f"cannot read the dataset index {path} ({error}); run `xaibench download` again"
        ) from None
    ids = sorted(by_id)
    labels = np.array([by_id[i] for i in ids], dtype=np.int64)
    return DatasetIndex(
        info["name"], root, ids, labels, info.get("expected_per_class"), dest / "labels.txt"
    )


def subset_rows(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted row numbers of a reproducible subset of `n` of `labels` (N,).

    With n >= 1000 the subset is stratified: n // 1000 images of every class, and the remaining
    n % 1000 from as many distinct classes chosen at random, each image drawn at random in its
    class. A class with too few images gives all it has, and the shortfall is drawn from the rest.
    With n < 1000, n images are drawn uniformly. The same (labels, n, seed) give the same subset.
    """
    labels = np.asarray(labels)
    if not 0 < n <= len(labels):
        raise ConfigError(
            f"a subset of {n} images: choose 1..{len(labels)} (the images in the dataset)"
        )
    rng = np.random.default_rng(seed)
    if n < NUM_CLASSES:
        return np.sort(rng.choice(len(labels), n, replace=False))
    quota = np.full(NUM_CLASSES, n // NUM_CLASSES)
    quota[rng.choice(NUM_CLASSES, n % NUM_CLASSES, replace=False)] += 1
    chosen = []
    for k in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == k)
        chosen.append(rng.permutation(rows)[: quota[k]])
    picked = np.concatenate(chosen)
    short = n - len(picked)
    if short:
        rest = np.setdiff1d(np.arange(len(labels)), picked)
        picked = np.concatenate([picked, rng.choice(rest, short, replace=False)])
    return np.sort(picked)


def write_subset(dest: Path, n: int, seed: int) -> Path:
    """Write `dest/subset-N-seedS.txt` (labels format) for the index in `dest`; returns its path."""
    index = read_index(dest)
    classes = imagenet_classes()
    rows = subset_rows(index.labels, n, seed)
    path = Path(dest) / f"subset-{n}-seed{seed}.txt"
    write_text_atomic(
        path,
        "".join(
            f"{index.ids[r]} {index.labels[r]} {classes.wnid(int(index.labels[r]))}\n" for r in rows
        ),
    )
    return path
