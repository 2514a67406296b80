"""Per-process evaluation checkpoints and the merging and gathering of per-row results."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from xaibench.core.errors import StoreError
from xaibench.dist import World


def checkpoint_of(world: World, checkpoint: Path | None) -> Path | None:
    """The checkpoint this process saves to: `checkpoint` itself, or its own file beside it."""
    if checkpoint is None or world.size == 1:
        return checkpoint
    stem = checkpoint.name.removesuffix(".npz")
    return checkpoint.with_name(f"{stem}.rank-{world.rank:05d}-of-{world.size:05d}.npz")


def checkpoint_files(checkpoint: Path | None) -> list[Path]:
    """`checkpoint` and the per-process checkpoints beside it that exist, in a fixed order."""
    if checkpoint is None:
        return []
    stem = checkpoint.name.removesuffix(".npz")
    found = sorted(checkpoint.parent.glob(f"{stem}.rank-*-of-*.npz"))
    return ([checkpoint] if checkpoint.exists() else []) + found


def _per_row(array: np.ndarray, n: int) -> bool:
    return array.ndim >= 1 and array.shape[0] == n


def _put(merged: dict[str, np.ndarray], name: str, rows, values: np.ndarray, n: int) -> None:
    """merged[name][rows] = values, creating merged[name] (N, ...) as "not computed" if absent:
    NaN for floats, zeros (False) otherwise."""
    if name not in merged:
        fill = np.nan if values.dtype.kind == "f" else 0
        merged[name] = np.full((n, *values.shape[1:]), fill, dtype=values.dtype)
    merged[name][rows] = values


def merge_rows(parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Union of per-row results: each part has `done` (N,) bool and arrays whose first dimension is N.

    A row is taken from the first part in which it is done; arrays of another shape come from the
    first part. Every array name is merged, so results of any kind survive.
    """
    n = len(parts[0]["done"])
    merged: dict[str, np.ndarray] = {}
    taken = np.zeros(n, bool)
    for part in parts:
        rows = np.flatnonzero(np.asarray(part["done"], bool) & ~taken)
        for name, array in part.items():
            array = np.asarray(array)
            if _per_row(array, n):
                _put(merged, name, rows, array[rows], n)
            else:
                merged.setdefault(name, array)
        taken[rows] = True
    return merged


def gather_rows(
    world: World, arrays: Mapping[str, np.ndarray], rows: np.ndarray
) -> dict[str, np.ndarray]:
    """Every process's results for the rows it computed (`rows`), merged, on every process.

    `arrays` holds `done` (N,) and per-row results as in `merge_rows`; every process starts from the
    same resumed results and adds its own rows. StoreError if two processes computed the same row.
    """
    if world.size == 1:
        return dict(arrays)
    n = len(arrays["done"])
    mine = {name: a[rows] for name, a in arrays.items() if _per_row(np.asarray(a), n)}
    merged = {name: np.array(a, copy=True) for name, a in arrays.items()}
    seen = np.zeros(n, bool)
    for rank, (their_rows, theirs) in enumerate(world.all_gather((rows, mine))):
        if seen[their_rows].any():
            row = int(their_rows[seen[their_rows]][0])
            raise StoreError(f"row {row} was evaluated by process {rank} and another one")
        seen[their_rows] = True
        for name, values in theirs.items():
            _put(merged, name, their_rows, values, n)
    return merged
