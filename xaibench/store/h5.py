"""The HDF5 store (`.h5`): resumable, one compressed chunk per map (docs/store-format.md).

Each map chunk carries a Fletcher-32 checksum, so a damaged chunk is reported, not read as garbage.

Crash safety: the file is created under a temporary name and renamed into place, so it always has
its attributes and fixed-size datasets. Each `write` puts the maps, targets, scores and times in
the file and flushes it, and only then sets and flushes `done`; a process killed at any moment
leaves a file whose `done` rows are complete. The fixed-size datasets are written in place, so
after creation only the chunked `maps` dataset changes the file's structure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from xaibench.core.errors import StoreError
from xaibench.store.base import Rows, SaliencyStore
from xaibench.store.meta import FORMAT, FORMAT_VERSION, StoreMeta

COMPRESSIONS = ("lzf", "gzip", None)
H5_SUFFIXES = (".h5", ".hdf5")


def _selection(rows: np.ndarray) -> slice | np.ndarray:
    """A slice for sorted contiguous rows (fast in h5py), else the sorted row array."""
    if rows[-1] - rows[0] + 1 == len(rows):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _open_file(path: Path, mode: str) -> h5py.File:
    if not path.exists():
        raise StoreError(f"store {path} does not exist; run `xaibench generate` to write it")
    try:
        return h5py.File(path, mode)
    except BlockingIOError:
        raise StoreError(
            f"store {path} is open for writing by another process; wait for it to finish"
        ) from None
    except PermissionError as error:
        raise StoreError(
            f"store {path} cannot be opened ({error}); check its permissions"
        ) from None
    except OSError as error:
        raise StoreError(
            f"store {path} cannot be read as HDF5 ({error}); it is corrupt or not a store: "
            "delete it and run `xaibench generate` again"
        ) from None


class H5Store(SaliencyStore):
    """An HDF5 store, open for reading (`open`) or writing (`create`, `open(writable=True)`)."""

    def __init__(self, path: Path, file: h5py.File, compression: str | None = "lzf"):
        self.path = path
        self._file = file
        self._compression = compression
        try:
            self._check_format()
            self.meta = StoreMeta.from_attrs(dict(file.attrs))
            self.ids = file["ids"].asstr()[:].tolist()
            self.labels = file["label"][:].astype(np.int64)
            self.targets = file["target"][:].astype(np.int64)
            self.scores = file["score"][:].astype(np.float32)
            self.done = file["done"][:].astype(bool)
            self.seconds = (
                file["seconds"][:].astype(np.float32)
                if "seconds" in file
                else np.full(len(self.ids), np.nan, np.float32)
            )
        except (KeyError, OSError, ValueError) as error:
            file.close()
            raise StoreError(
                f"store {path} is incomplete or corrupt ({error}); delete it and run "
                "`xaibench generate` again"
            ) from None
        except StoreError:
            file.close()
            raise

    def _check_format(self) -> None:
        attrs = self._file.attrs
        if attrs.get("format") != FORMAT:
            raise StoreError(
                f"{self.path} is not an xaibench saliency store (format={attrs.get('format')!r})"
            )
        if int(attrs.get("format_version", -1)) != FORMAT_VERSION:
            raise StoreError(
                f"{self.path} has store format_version {attrs.get('format_version')}, this "
                f"xaibench reads {FORMAT_VERSION}; use the xaibench version that wrote it"
            )

    @classmethod
    def open(cls, path: Path, writable: bool = False, compression: str | None = "lzf") -> H5Store:
        """Open an existing store; `compression` applies to a `maps` dataset not yet created."""
        path = Path(path)
        return cls(path, _open_file(path, "r+" if writable else "r"), compression)

    @classmethod
    def create(
        cls,
        path: Path,
        meta: StoreMeta,
        ids: Sequence[str],
        labels: np.ndarray,
        compression: str | None = "lzf",
    ) -> H5Store:
        """Write a new empty store for N = len(ids) images (atomically) and open it for writing."""
        path = Path(path)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(ids),):
            raise ValueError(f"labels must be ({len(ids)},), got {labels.shape}")
        n = len(ids)
        if n == 0:
            raise StoreError(f"cannot create {path} for a run with no images")
        creating = path.with_name(path.name + ".creating")
        with h5py.File(creating, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            for key, value in meta.to_attrs().items():
                f.attrs[key] = value
            f.create_dataset("ids", data=list(ids), dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("target", data=np.full(n, -1, np.int64))
            f.create_dataset("score", data=np.full(n, np.nan, np.float32))
            f.create_dataset("label", data=labels)
            f.create_dataset("seconds", data=np.full(n, np.nan, np.float32))
            f.create_dataset("done", data=np.zeros(n, bool))
        os.replace(creating, path)
        return cls.open(path, writable=True, compression=compression)

    @property
    def closed(self) -> bool:
        return not self._file.id.valid

    @property
    def maps(self) -> h5py.Dataset:
        """The (N, h, w) float32 maps dataset; rows not done hold NaN."""
        if "maps" not in self._file:
            raise StoreError(f"store {self.path} holds no maps yet; run `xaibench generate`")
        return self._file["maps"]

    def read_maps(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size == 0:
            return np.empty((0, *self.maps.shape[1:]), np.float32)
        rows, inverse = np.unique(indices, return_inverse=True)
        try:
            return self.maps[_selection(rows)][inverse]
        except OSError as error:
            raise StoreError(
                f"store {self.path}: cannot read maps ({error}); it is corrupt: delete it and run "
                "`xaibench generate` again"
            ) from None

    def write(self, rows: Rows) -> None:
        if self._file.mode != "r+":
            raise StoreError(f"{self.path} is open for reading only; use create_or_resume to write")
        indices, b = rows.indices, len(rows)
        if b == 0:
            return
        if len(np.unique(indices)) != b or indices.min() < 0 or indices.max() >= len(self):
            raise ValueError(f"indices must be distinct rows in [0, {len(self)}), got {indices}")
        order = np.argsort(indices)
        written, where = indices[order], _selection(indices[order])
        self._seconds_dataset()
        columns = [
            ("target", self.targets, rows.targets),
            ("score", self.scores, rows.scores),
            ("seconds", self.seconds, rows.seconds),
        ]
        self._maps_dataset(rows.maps.shape[1:])[where] = rows.maps[order]
        for name, held, values in columns:
            values = values[order]
            self._file[name][where] = values
            held[written] = values
        self._file.flush()
        self._file["done"][where] = True
        self._file.flush()
        self.done[written] = True

    def _seconds_dataset(self) -> h5py.Dataset:
        """The (N,) float32 `seconds` dataset; a store written before it existed gets it here."""
        if "seconds" not in self._file:
            self._file.create_dataset("seconds", data=self.seconds)
        return self._file["seconds"]

    def _maps_dataset(self, shape: tuple[int, ...]) -> h5py.Dataset:
        """The (N, h, w) maps dataset, created on the first write when (h, w) is known."""
        if "maps" in self._file:
            maps = self._file["maps"]
            if maps.shape[1:] != shape:
                raise ValueError(f"maps must be {maps.shape[1:]} like the stored ones, got {shape}")
            return maps
        maps = self._file.create_dataset(
            "maps",
            shape=(len(self), *shape),
            dtype=np.float32,
            chunks=(1, *shape),
            compression=self._compression,
            fletcher32=True,
            fillvalue=np.nan,
        )
        self._file.flush()
        return maps

    def close(self) -> None:
        if not self.closed:
            self._file.close()
