"""Shard stores: the per-process stores of a run split over several processes, and their merge.

A store at `runs/vgg16/tgrad.h5` written by several processes gets a folder
`runs/vgg16/tgrad.h5.shards/` holding one HDF5 store per process and launch,
`rank-00003-of-00008.h5`. Every shard store is an ordinary store of the same run over all N images
(same metadata, ids and labels) in which only the rows that process wrote are `done`, so it resumes,
checks and reads like any store. When every process has finished, one process merges the rows of the
shard stores (and of an unfinished single-process store at the final path) into the final store.
docs/store-format.md describes the layout and the rules.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import h5py
import numpy as np

from xaibench.core.errors import StoreError
from xaibench.store import _checked, _container, open_store
from xaibench.store.h5 import WRITE_ERRORS, H5Store, _selection, write_error
from xaibench.store.lock import StoreLock
from xaibench.store.meta import StoreMeta
from xaibench.store.npz import export_npz, partial_path

log = logging.getLogger(__name__)

SHARD_PATTERN = "rank-*-of-*.h5"
# Rows copied per read and write while merging: bounds memory at this many maps.
MERGE_ROWS = 256


def shard_dir(path: Path) -> Path:
    """`runs/vgg16/tgrad.h5.shards`: the folder of the shard stores of the store at `path`."""
    return path.with_name(path.name + ".shards")


def shard_path(path: Path, rank: int, world_size: int) -> Path:
    """The shard store of process `rank` out of `world_size` for the store at `path`."""
    return shard_dir(path) / f"rank-{rank:05d}-of-{world_size:05d}.h5"


def shard_paths(path: Path) -> list[Path]:
    """The shard stores that exist for the store at `path`, sorted by name."""
    return sorted(shard_dir(path).glob(SHARD_PATTERN))


def working_path(path: Path) -> Path:
    """The HDF5 file a single process writes for the store at `path`: itself, or an npz's working file."""
    return path if _container(path) == "h5" else partial_path(path)


def is_complete(path: Path) -> bool:
    """True if the final store at `path` exists and every row is done (an npz exists only then)."""
    if not path.exists():
        return False
    if _container(path) == "npz":
        return True
    with H5Store.open(path) as store:
        return store.complete


def _sources(path: Path) -> list[Path]:
    """Every HDF5 file holding rows of the store at `path`: its working file, then the shards."""
    working = working_path(path)
    return ([working] if working.exists() else []) + shard_paths(path)


def done_rows(path: Path, meta: StoreMeta, ids: Sequence[str], labels: np.ndarray) -> np.ndarray:
    """(N,) bool: the rows done in the final store at `path` or in any of its shard stores.

    Each file is checked to hold the run `meta` over `ids` and `labels` (StoreError naming it if not)
    and has its damaged rows reopened (`H5Store.reopen_damaged`), under its lock; the shard stores
    left by a merge killed after the final store was complete are removed.
    """
    ids, labels = list(ids), np.asarray(labels, np.int64)
    done = np.zeros(len(ids), bool)
    if is_complete(path):
        if _container(path) == "npz":
            _checked(open_store(path), meta, ids, labels).close()
            return ~done
        remove_stale_shards(path)
    for source in _sources(path):
        with _checked(H5Store.open(source, writable=True), meta, ids, labels) as store:
            store.reopen_damaged()
            done |= store.done
    return done


def merge_shards(path: Path, meta: StoreMeta, ids: Sequence[str], labels: np.ndarray) -> list[Path]:
    """Merge the shard stores of `path` (and its unfinished working file) into the final store.

    Every row must be done in exactly one source, else StoreError naming the image and the files.
    The merged HDF5 file is built under a temporary name, checked, and renamed into place (for an
    npz store it is the working file, exported as usual); only then are the shard stores removed.
    The lock of the working file and of every shard store is held throughout.
    Every dataset whose first dimension is N is copied row by row from the source where the row is
    done, whatever its name, so per-row fields added to the format survive; other datasets and the
    attributes are copied from the earliest-created source. Returns the shard stores merged.
    """
    ids, labels = list(ids), np.asarray(labels, np.int64)
    shards = shard_paths(path)
    sources = _sources(path)
    if not sources:
        raise StoreError(f"{path}: no store and no shard store to merge; run generate first")
    working = working_path(path)
    with ExitStack() as locks:
        for source in (working, *shards):
            locks.enter_context(StoreLock(source))
        owner = _row_owners(sources, meta, ids, labels)
        _merge_into(working, sources, owner, meta, ids, labels)
        if working != path:
            with H5Store.open(working) as merged:
                export_npz(merged, path)
            working.unlink()
        for shard in shards:
            shard.unlink()
    _remove_empty(shard_dir(path))
    log.info("merged %d shard store(s) into %s", len(shards), path)
    return shards


def _merge_into(
    working: Path,
    sources: list[Path],
    owner: np.ndarray,
    meta: StoreMeta,
    ids: list[str],
    labels: np.ndarray,
) -> None:
    """Build the merged file under a temporary name, check it and rename it to `working`."""
    merging = working.with_name(working.name + ".merging")
    try:
        try:
            _copy_rows(sources, owner, merging)
        except WRITE_ERRORS as error:
            raise write_error(merging, error) from error
        with _checked(H5Store.open(merging), meta, ids, labels) as merged:
            if not merged.complete:
                raise StoreError(f"{merging}: the merge left rows not done; delete it and re-run")
        os.replace(merging, working)
    finally:
        merging.unlink(missing_ok=True)


def remove_stale_shards(path: Path) -> None:
    """Remove the shard stores left by a merge that was killed after the final store was complete."""
    for shard in shard_paths(path):
        shard.unlink()
    _remove_empty(shard_dir(path))


def _remove_empty(folder: Path) -> None:
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _row_owners(
    sources: list[Path], meta: StoreMeta, ids: list[str], labels: np.ndarray
) -> np.ndarray:
    """(N,) int: the index in `sources` of the one file in which each row is done."""
    owner = np.full(len(ids), -1, np.int64)
    for i, source in enumerate(sources):
        with _checked(H5Store.open(source), meta, ids, labels) as store:
            twice = np.flatnonzero(store.done & (owner >= 0))
            if twice.size:
                row = int(twice[0])
                raise StoreError(
                    f"image {ids[row]!r} is done in both {sources[owner[row]]} and {source}; "
                    f"delete one of them and re-run to write its rows again"
                )
            owner[store.done] = i
    missing = np.flatnonzero(owner < 0)
    if missing.size:
        raise StoreError(
            f"{len(missing)} image(s) are in no store of {', '.join(map(str, sources))}, first "
            f"{ids[int(missing[0])]!r}; re-run generate to write them"
        )
    return owner


def _copy_rows(sources: list[Path], owner: np.ndarray, destination: Path) -> None:
    """Write `destination` with the rows of `sources[owner[row]]` for every row."""
    n = len(owner)
    files = [h5py.File(source, "r") for source in sources]
    try:
        first = min(range(len(files)), key=lambda i: str(files[i].attrs.get("created", "")))
        with h5py.File(destination, "w") as out:
            out.attrs.update(dict(files[first].attrs))
            order = [first, *(i for i in range(len(files)) if i != first)]
            for i in order:
                rows = np.flatnonzero(owner == i)
                files[i].visititems(lambda name, item, i=i, rows=rows: _copy(item, out, rows, n))
    finally:
        for f in files:
            f.close()


def _copy(item: h5py.HLObject, out: h5py.File, rows: np.ndarray, n: int) -> None:
    """Copy dataset `item` into `out`: rows `rows` if it is per-row (first dimension N), else whole.

    A per-row dataset is created with the creation properties of `item` (chunks, filters, fill
    value), so that its chunks can be copied as stored.
    """
    if not isinstance(item, h5py.Dataset):
        return
    per_row = item.ndim >= 1 and item.shape[0] == n
    if item.name in out:
        if per_row:
            _copy_row_blocks(item, out[item.name], rows)
        return
    if not per_row:
        out.copy(item, item.name)
        return
    links = h5py.h5p.create(h5py.h5p.LINK_CREATE)
    links.set_create_intermediate_group(True)
    created = h5py.h5d.create(
        out.id,
        item.name.encode(),
        item.id.get_type(),
        item.id.get_space(),
        dcpl=item.id.get_create_plist(),
        lcpl=links,
    )
    target = h5py.Dataset(created)
    target.attrs.update(dict(item.attrs))
    # Rows no source carries read as NaN (unknown), not 0; `maps` already has NaN as fill value.
    if target.dtype.kind == "f" and not np.isnan(target.fillvalue):
        target[...] = np.nan
    _copy_row_blocks(item, target, rows)


def _filters(dataset: h5py.Dataset) -> list[tuple]:
    plist = dataset.id.get_create_plist()
    return [plist.get_filter(i)[:3] for i in range(plist.get_nfilters())]


def _copy_row_blocks(source: h5py.Dataset, target: h5py.Dataset, rows: np.ndarray) -> None:
    """target[rows] = source[rows].

    Datasets stored one row per chunk with the same filters (the maps) have their chunks copied as
    stored: no decompression, no compression, the same bytes. Others are copied in blocks of at most
    MERGE_ROWS rows.
    """
    one_row = (1, *source.shape[1:])
    if (
        source.chunks == one_row
        and target.chunks == one_row
        and source.dtype == target.dtype
        and _filters(source) == _filters(target)
    ):
        corner = (0,) * (source.ndim - 1)
        for row in rows.tolist():
            mask, chunk = source.id.read_direct_chunk((row, *corner))
            target.id.write_direct_chunk((row, *corner), chunk, mask)
        return
    for start in range(0, len(rows), MERGE_ROWS):
        where = _selection(rows[start : start + MERGE_ROWS])
        target[where] = source[where]
