"""One call that prepares any dataset `xaibench download` knows: ImageNet val, a public subset, or
a layout already on disk, into a folder with its index files (xaibench/data/index.py)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from xaibench.core.checks import url_problem
from xaibench.core.errors import ConfigError
from xaibench.data.archives import ARCHIVES
from xaibench.data.imagenet import IMAGENET_KEYS, prepare_imagenet_val
from xaibench.data.index import DatasetIndex
from xaibench.data.public import PUBLIC, prepare_public

IMAGENET_URL_ENV = "XAIBENCH_IMAGENET_URL"
"""The environment variable naming a server that holds the ImageNet archives."""
DATASETS = ("imagenet-val", *PUBLIC, "local")
"""The datasets `prepare_dataset` prepares."""


def imagenet_archives(paths: Sequence[Path]) -> dict[str, Path]:
    """Archive files the user has -> their archive keys, matched by file name."""
    by_name = {ARCHIVES[k].filename: k for k in IMAGENET_KEYS}
    given = {}
    for path in map(Path, paths):
        if path.name not in by_name:
            raise ConfigError(
                f"{path}: expected one of {', '.join(by_name)} (keep the original file name, or "
                "link it under that name)",
                param="archives",
            )
        given[by_name[path.name]] = path
    return given


def prepare_dataset(
    dataset: str,
    dest: Path,
    *,
    url_base: str | None = None,
    archives: Sequence[Path] = (),
    boxes: bool = False,
    sha256: str | None = None,
    checksums: Mapping[str, str] | None = None,
    source: Path | None = None,
    labels_file: Path | None = None,
    retries: int = 5,
    progress: bool = True,
) -> tuple[DatasetIndex, str | None]:
    """Prepare `dataset` (one of `DATASETS`) in `dest`; returns its index and, for "local", the
    layout recognised at `source`. Safe to re-run: finished steps are not done again.

    imagenet-val: `archives` the user has, the rest from `url_base` (or $XAIBENCH_IMAGENET_URL);
    `boxes` adds the bounding boxes; `checksums` (file name -> sha256) are the user's own, checked
    instead of the published ones (`prepare_imagenet_val`). Public subsets: the pinned URL, or a mirror at `url_base`, or
    one archive; `sha256` adds a whole-file check. local: the layout at `source` indexed in place,
    with `labels_file` for a flat folder.
    """
    if dataset not in DATASETS:
        raise ConfigError(f"dataset {dataset!r}: choose one of {', '.join(DATASETS)}")
    if dataset == "local":
        if source is None:
            raise ConfigError("the dataset 'local' needs the folder to index", param="source")
        from xaibench.data.local import index_local  # imports torch, unlike the other datasets

        layout, index = index_local(Path(source), Path(dest), labels_file)
        return index, layout
    if dataset == "imagenet-val":
        index = prepare_imagenet_val(
            Path(dest),
            _imagenet_url(url_base),
            imagenet_archives(archives),
            boxes,
            retries=retries,
            progress=progress,
            checksums=checksums,
        )
        return index, None
    if len(archives) > 1:
        raise ConfigError(
            f"{dataset} has one archive, but {len(archives)} were given", param="archives"
        )
    index = prepare_public(
        dataset,
        Path(dest),
        url_base,
        Path(archives[0]) if archives else None,
        sha256,
        retries=retries,
        progress=progress,
    )
    return index, None


def _imagenet_url(url_base: str | None) -> str | None:
    """`url_base`, else `$XAIBENCH_IMAGENET_URL`; ConfigError for one that is not a URL."""
    if url_base:
        problem = url_problem(url_base)
        if problem:
            raise ConfigError(problem, param="url_base")
        return url_base
    from_environment = os.environ.get(IMAGENET_URL_ENV) or None
    problem = None if from_environment is None else url_problem(from_environment)
    if problem:
        raise ConfigError(f"${IMAGENET_URL_ENV}: {problem}")
    return from_environment
