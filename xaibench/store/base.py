"""The interface both store containers share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xaibench.core.errors import StoreError
from xaibench.store.meta import StoreMeta


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

    def write(
        self,
        indices: np.ndarray,
        maps: np.ndarray,
        targets: np.ndarray,
        scores: np.ndarray,
        labels: np.ndarray | None = None,
        seconds: np.ndarray | None = None,
    ) -> None:
        """Write rows: indices (b,), maps (b, h, w), targets (b,), scores (b,), labels (b,),
        seconds (b,) generation time per image."""
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
    ) -> None:
        """StoreError naming the first differing field: of `expected` (meta), the ids or labels."""
        self.meta.check_compatible(expected, source=str(self.path))
        if ids is not None:
            _check_same("ids", self.ids, list(ids), self.path)
        if labels is not None:
            _check_same("labels", self.labels.tolist(), np.asarray(labels).tolist(), self.path)


def _check_same(field: str, stored: list, wanted: list, path: Path) -> None:
    fix = "write to another path, or delete the store to start over"
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
