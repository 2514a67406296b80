"""The HDF5 store (`.h5`): resumable, one compressed chunk per map (docs/store-format.md).

Each map chunk carries a Fletcher-32 checksum, so a damaged chunk is reported, not read as garbage.

Crash safety: the file is created under a temporary name and renamed into place, so it always has
its attributes and fixed-size datasets. Each `write` puts the maps, targets, scores, times and the
rows' checksums in the file, flushes it and syncs it to the disk, and only then sets and flushes
`done`; a process killed at any moment leaves a file whose `done` rows are complete. The fixed-size
datasets are written in place, so after creation only the chunked `maps` dataset changes the file's
structure. A write that fails (a full disk) is a StoreError naming the store, and the store takes no
more writes. Each row's `checksum` (CRC-32 of its map, target, score and time) lets a writer
resuming the store find the done rows that are not what was written (`reopen_damaged`) and a
reader refuse them (`read_maps`).

A writer holds the store's lock file (`xaibench.store.lock`) from opening to `close`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import h5py
import numpy as np

from xaibench.core.errors import StoreError
from xaibench.core.progress import progress_bar
from xaibench.store.base import Rows, SaliencyStore
from xaibench.store.lock import StoreLock
from xaibench.store.meta import FORMAT, FORMAT_VERSION, StoreMeta

log = logging.getLogger(__name__)

COMPRESSIONS = ("lzf", "gzip", None)
H5_SUFFIXES = (".h5", ".hdf5")
# The checksum of a row written before stores recorded checksums: not verified.
UNRECORDED = -1
# Maps read per block when verifying a store, and the seconds before the verification shows progress.
VERIFY_ROWS = 256
VERIFY_DELAY = 5.0
# The errors h5py raises when the file cannot be written (a failed flush is a RuntimeError).
WRITE_ERRORS = (OSError, RuntimeError)
# A writer opens the file without a chunk cache: each map chunk, written whole and once, goes to
# the file during `write`, where a failure is raised. A cached chunk would be written when its
# dataset is closed, where HDF5 can only print the failure, and closing the file then crashes.
UNCACHED = {"rdcc_nbytes": 0}


def row_checksums(
    maps: np.ndarray, targets: np.ndarray, scores: np.ndarray, seconds: np.ndarray
) -> np.ndarray:
    """(n,) int64: the CRC-32 of each row's map (h, w) float32, target int64, score and time
    float32, all little-endian, in that order."""
    columns = (
        np.ascontiguousarray(maps, "<f4"),
        np.asarray(targets, "<i8"),
        np.asarray(scores, "<f4"),
        np.asarray(seconds, "<f4"),
    )
    sums = np.empty(len(maps), np.int64)
    for i in range(len(maps)):
        crc = 0
        for column in columns:
            crc = zlib.crc32(column[i].tobytes(), crc)
        sums[i] = crc
    return sums


def _reason(error: BaseException) -> str:
    """The operating system's words for a failed write: HDF5's `error message`, or the error's."""
    found = re.search(r"error message = '([^']*)'", str(error))
    if found:
        return found.group(1)
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def write_error(path: Path, error: BaseException) -> StoreError:
    """The StoreError of a failed write to the store file `path`."""
    return StoreError(
        f"cannot write store {path} ({_reason(error)}); the disk may be full: free space and "
        "re-run the same command to resume (rows written before this one are kept)"
    )


NOT_PERMITTED = (errno.EROFS, errno.EACCES, errno.EPERM)
"""errno values of a file that its file system or its permissions keep from being opened."""


def _selection(rows: np.ndarray) -> slice | np.ndarray:
    """A slice for sorted contiguous rows (fast in h5py), else the sorted row array."""
    if rows[-1] - rows[0] + 1 == len(rows):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _open_file(path: Path, mode: str) -> h5py.File:
    if not path.exists():
        raise StoreError(f"store {path} does not exist; run `xaibench generate` to write it")
    try:
        return h5py.File(path, mode, **(UNCACHED if mode != "r" else {}))
    except BlockingIOError:
        raise StoreError(
            f"store {path} is open for writing by another process; wait for it to finish"
        ) from None
    except OSError as error:
        if error.errno in NOT_PERMITTED and mode != "r":
            raise StoreError(
                f"store {path} is not writable ({error}): its file system is read-only or its "
                "permissions forbid writing; the results in it are intact: run on a writable "
                "copy of it, or make it writable"
            ) from None
        if error.errno in NOT_PERMITTED:
            raise StoreError(
                f"store {path} cannot be opened ({error}); check its permissions"
            ) from None
        raise StoreError(
            f"store {path} cannot be read as HDF5 ({error}); it is corrupt or not a store: "
            "delete it and run `xaibench generate` again"
        ) from None


class H5Store(SaliencyStore):
    """An HDF5 store, open for reading (`open`) or writing (`create`, `open(writable=True)`)."""

    def __init__(
        self,
        path: Path,
        file: h5py.File,
        compression: str | None = "lzf",
        lock: StoreLock | None = None,
    ):
        self.path = path
        self._file = file
        self._compression = compression
        self._lock = lock
        self._failure: StoreError | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
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
            self.checksums = (
                file["checksum"][:].astype(np.int64)
                if "checksum" in file
                else np.full(len(self.ids), UNRECORDED, np.int64)
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
    def open(
        cls,
        path: Path,
        writable: bool = False,
        compression: str | None = "lzf",
        lock: StoreLock | None = None,
    ) -> H5Store:
        """Open an existing store; `compression` applies to a `maps` dataset not yet created.

        Writable, it holds the store's `lock` (taken here if None) until `close`."""
        path = Path(path)
        if not writable:
            return cls(path, _open_file(path, "r"), compression)
        return _locked(
            path, lock, lambda held: cls(path, _open_file(path, "r+"), compression, held)
        )

    @classmethod
    def create(
        cls,
        path: Path,
        meta: StoreMeta,
        ids: Sequence[str],
        labels: np.ndarray,
        compression: str | None = "lzf",
        lock: StoreLock | None = None,
    ) -> H5Store:
        """Write a new empty store for N = len(ids) images (atomically) and open it for writing,
        holding its `lock` (taken here if None)."""
        path = Path(path)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(ids),):
            raise ValueError(f"labels must be ({len(ids)},), got {labels.shape}")
        if len(ids) == 0:
            raise StoreError(f"cannot create {path} for a run with no images")

        def create(held: StoreLock) -> H5Store:
            _write_new(path, meta, ids, labels)
            return cls(path, _open_file(path, "r+"), compression, held)

        return _locked(path, lock, create)

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
            maps = self.maps[_selection(rows)]
        except OSError as error:
            raise StoreError(
                f"store {self.path}: cannot read maps ({error}); it is corrupt: delete it and run "
                "`xaibench generate` again"
            ) from None
        damaged = rows[self._mismatched(rows, maps)]
        if damaged.size:
            raise StoreError(
                f"store {self.path}: {damaged.size} row(s) read differ from what was written, "
                f"first {self.ids[int(damaged[0])]!r} (row {int(damaged[0])}); re-run "
                "`xaibench generate` with the same settings to write them again"
            )
        return maps[inverse]

    def _mismatched(self, rows: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """(b,) bool: which of the sorted `rows`, with their `maps` as read, are done with a
        recorded checksum that their map, target, score and time do not match."""
        checked = self.done[rows] & (self.checksums[rows] != UNRECORDED)
        if not checked.any():
            return checked
        at = rows[checked]
        sums = row_checksums(maps[checked], self.targets[at], self.scores[at], self.seconds[at])
        checked[checked] = sums != self.checksums[at]
        return checked

    def damaged_rows(self) -> np.ndarray:
        """(D,) int64: the done rows whose map cannot be read, or whose map, target, score or time
        differ from the checksum recorded when they were written. Reads every such map once, in
        order (rows written before stores recorded checksums are not read)."""
        rows = np.flatnonzero(self.done & (self.checksums != UNRECORDED))
        damaged = []
        bar = progress_bar(
            total=len(rows), unit="map", desc=f"verifying {self.path.name}", delay=VERIFY_DELAY
        )
        with bar:
            for start in range(0, len(rows), VERIFY_ROWS):
                block = rows[start : start + VERIFY_ROWS]
                damaged.extend(self._damaged_in(block).tolist())
                bar.update(len(block))
        return np.asarray(damaged, np.int64)

    def _damaged_in(self, block: np.ndarray) -> np.ndarray:
        try:
            return block[self._mismatched(block, self.maps[_selection(block)])]
        except OSError:  # a chunk failing its Fletcher-32 checksum: find it row by row
            if len(block) == 1:
                return block
            return np.concatenate([self._damaged_in(block[i : i + 1]) for i in range(len(block))])

    def reopen_damaged(self) -> np.ndarray:
        """Mark the `damaged_rows` not done, so that a run writes them again; returns them."""
        self._check_writable()
        damaged = self.damaged_rows()
        if damaged.size:
            log.warning(
                "%s: %d done row(s) differ from what was written, first %r; writing them again",
                self.path,
                damaged.size,
                self.ids[int(damaged[0])],
            )
            try:
                self._dataset("done")[_selection(damaged)] = False
                self._file.flush()
            except WRITE_ERRORS as error:
                raise self._failed(error) from error
            self.done[damaged] = False
        return damaged

    def _check_writable(self) -> None:
        if self._file.mode != "r+":
            raise StoreError(f"{self.path} is open for reading only; use create_or_resume to write")
        if self._failure is not None:
            raise self._failure

    def _failed(self, error: BaseException) -> StoreError:
        """Record the write failure `error`: the store takes no more writes."""
        self._failure = write_error(self.path, error)
        return self._failure

    def write(self, rows: Rows) -> None:
        """Write `rows`: their maps, fields and checksums, flushed and synced to the disk, then
        their `done` flags. StoreError naming the store if the file cannot be written."""
        self._check_writable()
        indices, b = rows.indices, len(rows)
        if b == 0:
            return
        if len(np.unique(indices)) != b or indices.min() < 0 or indices.max() >= len(self):
            raise ValueError(f"indices must be distinct rows in [0, {len(self)}), got {indices}")
        if "maps" in self._file and self._dataset("maps").shape[1:] != rows.maps.shape[1:]:
            shape = self._dataset("maps").shape[1:]
            raise ValueError(
                f"maps must be {shape} like the stored ones, got {rows.maps.shape[1:]}"
            )
        order = np.argsort(indices)
        written = indices[order]
        sums = row_checksums(rows.maps, rows.targets, rows.scores, rows.seconds)
        columns = [
            ("target", self.targets, rows.targets),
            ("score", self.scores, rows.scores),
            ("seconds", self.seconds, rows.seconds),
            ("checksum", self.checksums, sums),
        ]
        try:
            self._write_rows(written, rows.maps[order], [(n, v[order]) for n, _, v in columns])
        except WRITE_ERRORS as error:
            raise self._failed(error) from error
        for _, held, values in columns:
            held[written] = values[order]
        self.done[written] = True

    def _write_rows(
        self, written: np.ndarray, maps: np.ndarray, columns: list[tuple[str, np.ndarray]]
    ) -> None:
        """The rows `written` (sorted): maps and columns, flushed and synced, then `done`."""
        where = _selection(written)
        self._maps_dataset(maps.shape[1:])[where] = maps
        for name, values in columns:
            self._dataset(name)[where] = values
        self._sync()
        self._dataset("done")[where] = True
        self._file.flush()

    def _sync(self) -> None:
        """Flush the file and have the operating system put it on the disk."""
        self._file.flush()
        os.fsync(self._file.id.get_vfd_handle())

    def _dataset(self, name: str) -> h5py.Dataset:
        """The dataset `name`, kept open until `close`: a dataset closed with data still in its
        cache would write it where a failure cannot be reported. A store written before the
        `seconds` or `checksum` dataset existed gets it here (NaN, `UNRECORDED`)."""
        if name not in self._datasets:
            if name == "seconds" and name not in self._file:
                self._file.create_dataset(name, data=self.seconds)
            if name == "checksum" and name not in self._file:
                self._file.create_dataset(name, data=self.checksums, fillvalue=UNRECORDED)
            self._datasets[name] = self._file[name]
        return self._datasets[name]

    def _maps_dataset(self, shape: tuple[int, ...]) -> h5py.Dataset:
        """The (N, h, w) maps dataset, created on the first write when (h, w) is known."""
        if "maps" in self._file:
            return self._dataset("maps")
        self._file.create_dataset(
            "maps",
            shape=(len(self), *shape),
            dtype=np.float32,
            chunks=(1, *shape),
            compression=self._compression,
            fletcher32=True,
            fillvalue=np.nan,
        )
        self._file.flush()
        return self._dataset("maps")

    def close(self) -> None:
        """Close the file and release the lock. StoreError if the file cannot be written out;
        after a failed write the file is closed as it is (the failure was raised then)."""
        try:
            if not self.closed:
                self._datasets.clear()
                try:
                    self._file.close()
                except WRITE_ERRORS as error:
                    if self._failure is None:
                        raise self._failed(error) from error
        finally:
            if self._lock is not None:
                self._lock.release()


def _locked(path: Path, lock: StoreLock | None, make: Callable[[StoreLock], H5Store]) -> H5Store:
    """`make(lock)`, with the store's lock taken first if `lock` is None (and released again if
    `make` fails)."""
    held = lock or StoreLock(path)
    try:
        return make(held)
    except BaseException:
        if lock is None:
            held.release()
        raise


def _write_new(path: Path, meta: StoreMeta, ids: Sequence[str], labels: np.ndarray) -> None:
    """Write an empty store at `path` through a temporary file renamed into place."""
    n = len(ids)
    creating = path.with_name(path.name + ".creating")
    try:
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
            f.create_dataset(
                "checksum", data=np.full(n, UNRECORDED, np.int64), fillvalue=UNRECORDED
            )
        os.replace(creating, path)
    except WRITE_ERRORS as error:
        creating.unlink(missing_ok=True)
        raise write_error(path, error) from error
