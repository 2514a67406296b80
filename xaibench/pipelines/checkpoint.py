"""Checkpoints of a run (one npz of named arrays and the run's key, one file per process) and the
merging and gathering of per-row results."""

from __future__ import annotations

import logging
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from xaibench.core.atomic import write_atomic
from xaibench.core.errors import StoreError
from xaibench.dist import World

log = logging.getLogger(__name__)


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


def remove_checkpoint(checkpoint: Path | None) -> None:
    """Remove `checkpoint` and the per-process checkpoints beside it: once the results are written."""
    for path in checkpoint_files(checkpoint):
        path.unlink(missing_ok=True)


class Checkpoint:
    """The results so far of one run, to resume it: named arrays and the run's `key` in one npz.

    With `path` None nothing is read or saved. With a `world` of several processes, each saves to its
    own file beside `path` (`checkpoint_of`) and `load` reads the files of every process
    (`checkpoint_files`). Every save is atomic and holds the key with the arrays, so a save cut short
    leaves the previous file whole and never pairs one run's key with another run's arrays. `run`
    names the kind of run in the log ("evaluation").
    """

    def __init__(self, path: Path | None, key: str, world: World | None = None, run: str = "run"):
        self.path, self.key, self.run = path, key, run
        self.own = checkpoint_of(world or World(), path)

    def load(self, remove_stale: bool = False) -> list[dict[str, np.ndarray]]:
        """The arrays (without `key`) of every readable file of this run, in `checkpoint_files`
        order. A file of another run (another key) is left out, or removed with `remove_stale`."""
        parts = []
        for path in checkpoint_files(self.path):
            saved = _read(path)
            if saved is None:
                continue
            if str(saved.pop("key", None)) == self.key:
                parts.append(saved)
                continue
            log.warning(
                "%s is from another %s; %s",
                path,
                self.run,
                "removing it" if remove_stale else "leaving it out",
            )
            if remove_stale:
                path.unlink(missing_ok=True)
        return parts

    def save(self, arrays: Mapping[str, np.ndarray]) -> None:
        """`arrays` and the key into this process's file, atomically."""
        if self.own is None:
            return
        named = {"key": np.array(self.key), **arrays}

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as file:  # a file object: savez adds no suffix to the name
                np.savez(file, **named)

        write_atomic(self.own, write)

    @contextmanager
    def saving(
        self, arrays: Callable[[], Mapping[str, np.ndarray]], every: float
    ) -> Iterator[Callable[[], None]]:
        """Within: the function yielded, called after each batch, saves `arrays()` once `every`
        seconds have passed since the last save; an exception (Ctrl-C, SIGTERM) saves them too."""
        last = time.monotonic()

        def tick() -> None:
            nonlocal last
            if self.own is not None and time.monotonic() - last > every:
                self.save(arrays())
                last = time.monotonic()

        try:
            yield tick
        except BaseException:
            self.save(arrays())
            raise

    def remove(self) -> None:
        """Remove the files of every process (`remove_checkpoint`)."""
        remove_checkpoint(self.path)


def _read(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {name: saved[name] for name in saved.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        log.warning("cannot read checkpoint %s (%s); leaving it out", path, error)
        return None


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
