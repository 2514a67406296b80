"""The stores a generation writes: the final stores with one process, shard stores with several.

Each process writes its own shard store (xaibench/store/shards.py) and process 0 merges them;
docs/store-format.md has the rules that make a re-run with any number of processes complete
exactly the missing rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xaibench.dist import World
from xaibench.store import SaliencyStore, create_or_resume, open_store
from xaibench.store import shards as shard_stores
from xaibench.store.meta import StoreMeta

log = logging.getLogger(__name__)


def _sharded(world: World, path: Path) -> bool:
    """Written through shard stores: several processes, or shards left by an earlier launch."""
    return world.size > 1 or bool(shard_stores.shard_paths(path))


def open_stores(
    world: World,
    outputs: Sequence[tuple[Path, StoreMeta]],
    ids: Sequence[str],
    labels: np.ndarray,
    compression: str | None = "lzf",
) -> list[tuple[SaliencyStore, set[int]]]:
    """For each (final store path, run metadata): the store this process writes, and its rows.
    New stores' maps are compressed with `compression` (`create_or_resume`).

    With one process and no shard stores: the final store itself (`create_or_resume`) and its rows
    not done. Otherwise process 0 finds the rows done in the final store and in every shard store of
    any earlier launch, the rows still missing for some method are split among the processes
    (`World.shard`), and each process writes its part into its own shard store.
    """
    if not any(_sharded(world, path) for path, _ in outputs):
        stores = [create_or_resume(path, meta, ids, labels, compression) for path, meta in outputs]
        return [(store, set(store.pending_indices().tolist())) for store in stores]
    done = (
        [shard_stores.done_rows(path, meta, ids, labels) for path, meta in outputs]
        if world.is_main
        else None
    )
    missing = ~np.stack(world.broadcast(done))  # (stores, N)
    mine = world.shard(np.flatnonzero(missing.any(0)))
    world.barrier()  # every file has been read before any process opens one for writing
    opened = []
    for (path, meta), rows in zip(outputs, missing, strict=True):
        if not rows.any() and shard_stores.is_complete(path):
            store = open_store(path)
        else:
            shard = shard_stores.shard_path(path, world.rank, world.size)
            shard.parent.mkdir(parents=True, exist_ok=True)
            store = create_or_resume(shard, meta, ids, labels, compression)
        opened.append((store, set(mine[rows[mine]].tolist())))
        log.info("%s: %d of %d rows to write here", path, len(opened[-1][1]), int(rows.sum()))
    return opened


def finish_stores(
    world: World, outputs: Sequence[tuple[Path, StoreMeta]], ids: Sequence[str], labels: np.ndarray
) -> None:
    """After every process has closed its stores: process 0 merges the shard stores of each output.

    Returns on every process once the final stores are in place.
    """
    world.barrier()
    if world.is_main:
        for path, meta in outputs:
            if not shard_stores.shard_paths(path):
                continue
            if shard_stores.is_complete(path):
                shard_stores.remove_stale_shards(path)
            else:
                shard_stores.merge_shards(path, meta, ids, labels)
    world.barrier()
