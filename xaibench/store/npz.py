"""The npz store (`.npz`): the archive format of the T-Grad authors' scripts, one key per image file name.

The archive is only ever written complete. While a run is in progress its rows live in an HDF5
working file next to it (`<name>.npz.partial.h5`), which resumes like any `.h5` store; when every
row is done the archive is written with `numpy.savez_compressed` to a temporary name and renamed
into place, and the working file is removed.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import h5py
import numpy as np

from xaibench.core.errors import StoreError
from xaibench.store.base import Rows, SaliencyStore
from xaibench.store.h5 import H5Store, write_error
from xaibench.store.meta import FORMAT, FORMAT_VERSION, StoreMeta

META_KEY = "__xaibench__"
# Keys that cannot name an image: the metadata key and savez_compressed's own argument names.
RESERVED_KEYS = (META_KEY, "file", "allow_pickle")
READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


PARTIAL_SUFFIX = ".partial.h5"


def partial_path(path: Path) -> Path:
    """The HDF5 working file of the npz store at `path`."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def npz_keys(ids: Sequence[str]) -> list[str]:
    """The key of each image: its file name, as the T-Grad authors' evaluation scripts index the archive.

    StoreError if two ids share a file name (or one is a reserved key): such a dataset needs `.h5`.
    """
    keys = [PurePosixPath(i).name for i in ids]
    first: dict[str, str] = {}
    for image_id, key in zip(ids, keys, strict=True):
        if key in RESERVED_KEYS:
            raise StoreError(f"image {image_id!r} has a reserved npz key name; use a .h5 store")
        if key in first:
            raise StoreError(
                f"images {first[key]!r} and {image_id!r} share the file name {key!r}, and an npz "
                "store keys maps by file name; use a .h5 store"
            )
        first[key] = image_id
    return keys


class _MapRow:
    """One map of an HDF5 dataset, read only when numpy converts it (`__array__`).

    Passing these to `numpy.savez_compressed` writes the archive one map at a time, so memory stays
    at one map however many images the store holds.
    """

    def __init__(self, maps: h5py.Dataset, row: int):
        self.maps, self.row = maps, row

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        return np.asarray(self.maps[self.row], dtype=dtype or np.float32)


def export_npz(source: H5Store, path: Path) -> None:
    """Write the complete store `source` as the npz archive `path`, atomically."""
    keys = npz_keys(source.ids)
    header = {
        "attrs": {"format": FORMAT, "format_version": FORMAT_VERSION, **source.meta.to_dict()},
        "ids": source.ids,
        "target": source.targets.tolist(),
        "score": source.scores.tolist(),
        "label": source.labels.tolist(),
        "seconds": [None if np.isnan(t) else float(t) for t in source.seconds],
    }
    arrays = {key: _MapRow(source.maps, row) for row, key in enumerate(keys)}
    arrays[META_KEY] = np.array(json.dumps(header))
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as f:
            np.savez_compressed(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except OSError as error:
        raise write_error(path, error) from error
    finally:
        temporary.unlink(missing_ok=True)


class NpzStore(SaliencyStore):
    """A complete npz store, read-only; maps are decompressed on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"store {self.path} does not exist; run `xaibench generate` first")
        self._file = open(self.path, "rb")  # noqa: SIM115 (held open until close())
        try:
            if not zipfile.is_zipfile(self._file):
                raise self._corrupt("not a zip archive")
            self._archive = np.load(self._file, allow_pickle=False)
            self._read_header()
        except READ_ERRORS as error:
            self._file.close()
            raise self._corrupt(error) from None
        except BaseException:
            self._file.close()
            raise

    def _corrupt(self, error: Exception | str) -> StoreError:
        return StoreError(
            f"store {self.path} cannot be read as npz ({error}); it is corrupt: delete it and run "
            "`xaibench generate` again"
        )

    def _read_header(self) -> None:
        try:
            header = json.loads(str(self._archive[META_KEY]))
            attrs = header["attrs"]
        except KeyError:
            raise StoreError(
                f"{self.path} has no {META_KEY!r} header: it is not an xaibench store "
                "(an npz from the T-Grad authors' scripts carries no run metadata)"
            ) from None
        if attrs.get("format") != FORMAT or attrs.get("format_version") != FORMAT_VERSION:
            raise StoreError(
                f"{self.path} has format {attrs.get('format')!r} version "
                f"{attrs.get('format_version')}; this xaibench reads {FORMAT} {FORMAT_VERSION}"
            )
        self.meta = StoreMeta.from_dict(attrs)
        self.ids = list(header["ids"])
        self.labels = np.asarray(header["label"], np.int64)
        self.targets = np.asarray(header["target"], np.int64)
        self.scores = np.asarray(header["score"], np.float32)
        recorded = header.get("seconds", [None] * len(self.ids))
        self.seconds = np.array([np.nan if t is None else t for t in recorded], np.float32)
        self.done = np.ones(len(self.ids), bool)
        self._keys = npz_keys(self.ids)

    def read_maps(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Each map is its own member of the archive, so maps are read one by one."""
        try:
            maps = [self._archive[self._keys[i]] for i in np.asarray(indices, np.int64)]
        except (KeyError, *READ_ERRORS) as error:
            raise self._corrupt(error) from None
        if not maps:
            return np.empty((0, 0, 0), np.float32)
        return np.stack(maps).astype(np.float32, copy=False)

    def close(self) -> None:
        self._archive.close()
        self._file.close()


class NpzWriter(SaliencyStore):
    """Writes an npz store through its HDF5 working file (which holds the lock, `H5Store`);
    `close` exports it once complete."""

    def __init__(self, path: Path, working: H5Store):
        self.path, self._working = Path(path), working
        for name in ("meta", "ids", "labels", "targets", "scores", "seconds", "done"):
            setattr(self, name, getattr(working, name))

    def read_maps(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._working.read_maps(indices)

    def write(self, rows: Rows) -> None:
        self._working.write(rows)

    def close(self) -> None:
        """Export the archive if every row is done, then close (and remove) the working file."""
        working = self._working
        if working.closed:
            return
        complete = working.complete
        try:
            if complete:
                export_npz(working, self.path)
        finally:
            working.close()
        if complete:  # a run that found the archive complete may have removed it already
            working.path.unlink(missing_ok=True)
