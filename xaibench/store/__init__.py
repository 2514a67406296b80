"""Saliency stores: HDF5 (`.h5`, default) and npz (`.npz`) behind one interface.

`open_store` reads a store; `create_or_resume` opens one for writing, resuming a store of the same
run, under the store's lock file (`xaibench.store.lock`). The file suffix picks the container
(docs/store-format.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from xaibench.core.errors import StoreError
from xaibench.store.base import Rows, SaliencyStore, StoreWriter
from xaibench.store.h5 import COMPRESSIONS, H5_SUFFIXES, H5Store
from xaibench.store.lock import StoreLock
from xaibench.store.meta import FORMAT, FORMAT_VERSION, StoreMeta
from xaibench.store.npz import PARTIAL_SUFFIX, NpzStore, NpzWriter, npz_keys, partial_path

SUFFIXES = (*H5_SUFFIXES, ".npz")
S = TypeVar("S", bound=SaliencyStore)

__all__ = [
    "COMPRESSIONS",
    "FORMAT",
    "FORMAT_VERSION",
    "SUFFIXES",
    "Rows",
    "SaliencyStore",
    "StoreMeta",
    "StoreWriter",
    "create_or_resume",
    "find_stores",
    "open_store",
]


def find_stores(folder: Path) -> list[Path]:
    """The stores in `folder`, sorted: files with a store suffix, without the working files of
    unfinished `.npz` stores."""
    return sorted(
        path
        for path in Path(folder).iterdir()
        if path.suffix.lower() in SUFFIXES and not path.name.endswith(PARTIAL_SUFFIX)
    )


def _container(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise StoreError(f"store {path}: unknown suffix {suffix!r}; use {' or '.join(SUFFIXES)}")
    return "npz" if suffix == ".npz" else "h5"


def open_store(path: str | Path) -> SaliencyStore:
    """Open a store for reading.

    For an `.npz` path whose run has not finished, the HDF5 working file is opened instead: its rows
    not `done` are exposed like those of an unfinished `.h5` store.
    """
    path = Path(path)
    if _container(path) == "h5":
        return H5Store.open(path)
    if not path.exists() and partial_path(path).exists():
        return H5Store.open(partial_path(path))
    return NpzStore(path)


def create_or_resume(
    path: str | Path,
    meta: StoreMeta,
    ids: Sequence[str],
    labels: np.ndarray,
    compression: str | None = "lzf",
) -> SaliencyStore:
    """Open the store at `path` for writing the run described by `meta` over images `ids`.

    A new store is created; an existing one of the same run (same model, weights, method, settings,
    target, preprocessing, ids and labels) is resumed, and `pending_indices()` gives the rows still
    to write (none when it is complete): its rows not done, and its done rows that differ from the
    checksums recorded when they were written (`H5Store.reopen_damaged`, which reads every map of
    the store once). Any difference is a StoreError naming the field.
    `compression` ("lzf", "gzip" or None) applies to a maps dataset not yet created.
    An HDF5 file open for writing holds its lock until `close`: StoreError naming the other writer
    if another run holds it.
    """
    if compression not in COMPRESSIONS:
        raise StoreError(f"compression {compression!r}: use one of {COMPRESSIONS}")
    path = Path(path)
    ids, labels = list(ids), np.asarray(labels, dtype=np.int64)
    if _container(path) == "h5":
        return _resume_h5(path, meta, ids, labels, compression)
    npz_keys(ids)
    working = partial_path(path)
    if path.exists():
        store = _checked(NpzStore(path), meta, ids, labels)
        if working.exists():  # left by an export killed before it could remove it
            working.unlink()
        return store
    return NpzWriter(path, _resume_h5(working, meta, ids, labels, compression))


def _resume_h5(
    path: Path, meta: StoreMeta, ids: list[str], labels: np.ndarray, compression: str | None
) -> H5Store:
    """The HDF5 store at `path` open for writing: created, or resumed with its damaged rows
    reopened. The lock is taken before the file is looked at, so two runs never both create it."""
    lock = StoreLock(path)
    try:
        if not path.exists():
            return H5Store.create(path, meta, ids, labels, compression, lock=lock)
        store = _checked(H5Store.open(path, True, compression, lock=lock), meta, ids, labels)
    except BaseException:
        lock.release()
        raise
    try:
        store.reopen_damaged()
    except BaseException:
        store.close()
        raise
    return store


def _checked(store: S, meta: StoreMeta, ids: list[str], labels: np.ndarray) -> S:
    """The store, if it holds the run `meta` over `ids` and `labels`; else closed and StoreError."""
    try:
        store.check_run(meta.run_fields(), ids, labels)
    except StoreError:
        store.close()
        raise
    return store
