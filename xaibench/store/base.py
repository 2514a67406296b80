"""The interface both store containers share, the rows written to them and what writes them."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from xaibench.core.errors import StoreError
from xaibench.store.meta import WRITING_FIX, StoreMeta


@dataclass(frozen=True)
class Rows:
    """Rows of a store to write: `indices` (n,) int64 row numbers, `maps` (n, h, w) float32,
    `targets` (n,) int64 classes explained, `scores` (n,) float32 their probabilities on the clean
    images, `seconds` (n,) float32 generation time per image (NaN, or None, for not recorded).

    The arrays are converted to those dtypes (without a copy when they have them already).
    """

    indices: np.ndarray
    maps: np.ndarray
    targets: np.ndarray
    scores: np.ndarray
    seconds: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.indices)
        seconds = np.full(n, np.nan, np.float32) if self.seconds is None else self.seconds
        arrays = {
            "indices": np.asarray(self.indices, dtype=np.int64),
            "maps": np.asarray(self.maps, dtype=np.float32),
            "targets": np.asarray(self.targets, dtype=np.int64),
            "scores": np.asarray(self.scores, dtype=np.float32),
            "seconds": np.asarray(seconds, dtype=np.float32),
        }
        if arrays["maps"].ndim != 3 or len(arrays["maps"]) != n:
            raise ValueError(f"maps must be ({n}, h, w), got {arrays['maps'].shape}")
        for name in ("indices", "targets", "scores", "seconds"):
            if arrays[name].shape != (n,):
                raise ValueError(f"{name} must be ({n},), got {arrays[name].shape}")
        for name, array in arrays.items():
            object.__setattr__(self, name, array)

    def __len__(self) -> int:
        return len(self.indices)


@runtime_checkable
class StoreWriter(Protocol):
    """What a run writes its rows through: a store open for writing, or a `BackgroundWriter`."""

    path: Path

    def write(self, rows: Rows) -> None:
        """Write `rows`; each is done once its map and fields are in the store."""

    def close(self) -> None:
        """Finish writing and release the store."""


class SaliencyStore(ABC):
    """Maps of one method for one model over one dataset, with per-image bookkeeping.

    `ids` (N,), `labels` (N,) int64, `targets` (N,) int64, `scores` (N,) float32, `seconds` (N,)
    float32 (generation time per image, NaN when not recorded) and `done` (N,) bool are held in
    memory; maps are read on demand with `read_maps`. Rows not `done` hold no valid
    map; a reader exposes them and the caller decides what to do.
    """

    path: Path
    meta: StoreMeta
    ids: list[str]
    labels: np.ndarray
    targets: np.ndarray
    scores: np.ndarray
    seconds: np.ndarray
    done: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def pending_indices(self) -> np.ndarray:
        """(P,) int64: the rows still to write, in order."""
        return np.flatnonzero(~self.done).astype(np.int64)

    @abstractmethod
    def read_maps(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """(b,) row indices in any order -> (b, h, w) float32 maps."""

    def write(self, rows: Rows) -> None:
        """Write `rows` (a store open for writing is a `StoreWriter`)."""
        raise StoreError(f"{self.path} is open for reading only; use create_or_resume to write")

    @abstractmethod
    def close(self) -> None:
        """Release the file; a writer also finishes the store if every row is done."""

    def __enter__(self) -> SaliencyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def check_run(
        self,
        expected: dict[str, Any],
        ids: Sequence[str] | None = None,
        labels: np.ndarray | None = None,
        fix: str = WRITING_FIX,
    ) -> None:
        """StoreError naming the first differing field: of `expected` (meta), the ids or labels;
        `fix` says what to do (`WRITING_FIX` for a run that would write into the store)."""
        self.meta.check_compatible(expected, source=str(self.path), fix=fix)
        if ids is not None:
            _check_same("ids", self.ids, list(ids), self.path, fix)
        if labels is not None:
            _check_same("labels", self.labels.tolist(), np.asarray(labels).tolist(), self.path, fix)


def _check_same(field: str, stored: list, wanted: list, path: Path, fix: str) -> None:
    if len(stored) != len(wanted):
        raise StoreError(
            f"{path} holds {field} of {len(stored)} images, but this run has {len(wanted)}; {fix}"
        )
    if stored != wanted:
        row = next(i for i, (a, b) in enumerate(zip(stored, wanted, strict=True)) if a != b)
        raise StoreError(
            f"{path}: {field} differ from this run's, first at row {row} "
            f"(stored {stored[row]!r}, this run {wanted[row]!r}); {fix}"
        )
