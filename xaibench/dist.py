"""Runs under torchrun: several processes, on one node or several, each with its share of the images.

Everything torchrun-specific lives here. `launch` reads the environment torchrun sets (RANK,
WORLD_SIZE, LOCAL_RANK), starts the process group (NCCL for CUDA tensors and Gloo for the small CPU
messages this module sends, or Gloo alone on CPU), puts each process on `cuda:LOCAL_RANK`, logs each
process to its own file and quiets the others' output. Without torchrun it yields a `World` of one
process and none of this happens: the code paths are the same, every collective is a no-op.

Generation: each process writes its own shard store (xaibench/store/shards.py) and process 0 merges
them. Evaluation: each process evaluates its share of the store rows, checkpoints them in its own
file, and the results are gathered on every process. docs/store-format.md has the rules that make a
re-run with any number of processes complete exactly the missing rows.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from tqdm.auto import tqdm

from xaibench.errors import ConfigError, StoreError
from xaibench.store import SaliencyStore, create_or_resume, open_store
from xaibench.store import shards as shard_stores
from xaibench.store.meta import StoreMeta

log = logging.getLogger(__name__)

# Processes wait for each other at the end of a run; shards differ in size by one image, but images
# do not all take the same time, and process 0 merges the stores while the others wait.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
# Process 0 redraws the shared progress bar this often while it waits for the others.
PROGRESS_POLL_SECONDS = 0.5
# Each process logs its progress this often.
LOG_SECONDS = 60.0
LOG_FORMAT = "%(asctime)s rank %(rank)s %(levelname)s %(name)s: %(message)s"


@dataclass
class World:
    """The processes of a run: this one's `rank` of `size`, its `local_rank` on its node, its device.

    `counter` is a key-value store shared by the processes (None for one process).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    counter: Any = None
    _bars: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """This process's part of `rows`: consecutive blocks whose sizes differ by at most one.

        Every row goes to exactly one process (no padding, unlike DistributedSampler's default), and
        the blocks keep the order of `rows`.
        """
        return np.array_split(np.asarray(rows, dtype=np.int64), self.size)[self.rank]

    def barrier(self) -> None:
        if self.size > 1:
            torch_dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Process 0's `value` on every process."""
        if self.size == 1:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's `value`, in rank order, on every process."""
        if self.size == 1:
            return [value]
        gathered: list[Any] = [None] * self.size
        torch_dist.all_gather_object(gathered, value)
        return gathered

    def progress(self, total: int, initial: int = 0, **tqdm_options: Any) -> Progress:
        """One progress bar for the whole run; `total` and `initial` count the rows of all processes."""
        self._bars += 1
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # torchrun --max-restarts
        key = f"progress/{attempt}/{self._bars}"
        return Progress(self, total, initial, key, **tqdm_options)


def from_env(environ: Mapping[str, str] = os.environ) -> World:
    """The World that torchrun's RANK, WORLD_SIZE and LOCAL_RANK describe (one process without them)."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(name in environ for name in names):
        return World()
    try:
        rank, size, local_rank = (int(environ[name]) for name in names)
    except ValueError:
        raise ConfigError(
            f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
            f"{', '.join(repr(environ[n]) for n in names)}; launch with torchrun"
        ) from None
    if not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} is not in 0..WORLD_SIZE-1={size - 1}; launch with torchrun")
    return World(rank=rank, size=size, local_rank=local_rank)


def place(world: World, device: torch.device) -> torch.device:
    """`cuda` under torchrun means `cuda:LOCAL_RANK`; any other device is kept as given."""
    if device.type != "cuda" or device.index is not None or world.size == 1:
        return device
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ConfigError(
            f"process {world.rank} has LOCAL_RANK={world.local_rank}, but this node has {count} "
            "CUDA device(s); start at most that many processes per node (--nproc-per-node)"
        )
    return torch.device("cuda", world.local_rank)


@contextmanager
def launch(device: torch.device, log_dir: Path) -> Iterator[World]:
    """The World of this process, with its process group and logging set up for the block.

    Under torchrun with several processes: the process group is started (its CPU messages through
    Gloo, CUDA tensors through NCCL), each process logs to `log_dir/rank-K.log`, process 0 alone
    writes warnings to stderr, and SIGTERM (which torchrun and SLURM send to stop a run) raises
    SystemExit so that stores are closed and checkpoints saved. With one process: nothing of this.
    """
    world = from_env()
    world.device = place(world, device)
    if world.size == 1:
        yield world
        return
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    backend = "cpu:gloo,cuda:nccl" if world.device.type == "cuda" else "gloo"
    torch_dist.init_process_group(
        backend, rank=world.rank, world_size=world.size, timeout=COLLECTIVE_TIMEOUT
    )
    handler = _log_to_file(world, Path(log_dir))
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        world.counter = torch_dist.PrefixStore("xaibench", _client_store())
        log.info("process %d of %d on %s", world.rank, world.size, world.device)
        yield world
    finally:
        signal.signal(signal.SIGTERM, previous)
        torch_dist.destroy_process_group()
        _stop_logging(handler)


def _client_store() -> torch_dist.Store:
    """A connection to the key-value store torchrun's processes meet at (MASTER_ADDR:MASTER_PORT)."""
    return torch_dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=COLLECTIVE_TIMEOUT,
    )


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    sys.exit(128 + signum)


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def _log_to_file(world: World, log_dir: Path) -> list[logging.Handler]:
    """Root logging to `log_dir/rank-K.log` (INFO and up); on process 0 also warnings to stderr."""
    log_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(log_dir / f"rank-{world.rank}.log")]
    if world.is_main:
        handlers.append(logging.StreamHandler(sys.stderr))
        handlers[-1].setLevel(logging.WARNING)
    root = logging.getLogger()
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(_RankFilter(world.rank))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return handlers


def _stop_logging(handlers: list[logging.Handler]) -> None:
    logging.captureWarnings(False)
    for handler in handlers:
        logging.getLogger().removeHandler(handler)
        handler.close()


class Progress:
    """A tqdm bar drawn by process 0 over the rows of every process.

    Each process adds what it does to a counter in the processes' shared store (one small message per
    update, no waiting on the others); process 0 draws the sum. `n` is this process's own count.
    With one process it is a plain tqdm bar.
    """

    def __init__(self, world: World, total: int, initial: int, key: str, **tqdm_options: Any):
        self.world, self.key, self.n, self.initial = world, key, 0, initial
        self.desc = tqdm_options.get("desc", "")
        if world.size > 1:
            tqdm_options["disable"] = tqdm_options.get("disable", False) or not world.is_main
        self.bar = tqdm(total=total, initial=initial, **tqdm_options)
        self.started = self.logged = time.monotonic()

    def update(self, count: int) -> None:
        self.n += count
        if self.world.size == 1:
            self.bar.update(count)
            return
        everyone = self.world.counter.add(f"{self.key}/rows", count)
        self.bar.update(self.initial + everyone - self.bar.n)
        if time.monotonic() - self.logged > LOG_SECONDS:
            self.logged = time.monotonic()
            log.info("%s: %d rows done by this process, %d by all", self.desc, self.n, everyone)

    def set_postfix_str(self, text: str) -> None:
        """Shown with one process only: under torchrun tqdm's own rate is the one for all processes."""
        if self.world.size == 1:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        """Close the bar; process 0 first waits until every process has closed its own."""
        if self.world.size > 1:
            seconds = time.monotonic() - self.started
            log.info("%s: %d rows done by this process in %.1f s", self.desc, self.n, seconds)
            counter = self.world.counter
            counter.add(f"{self.key}/closed", 1)
            while self.world.is_main and counter.add(f"{self.key}/closed", 0) < self.world.size:
                time.sleep(PROGRESS_POLL_SECONDS)
                self.bar.update(self.initial + counter.add(f"{self.key}/rows", 0) - self.bar.n)
            self.bar.update(self.initial + counter.add(f"{self.key}/rows", 0) - self.bar.n)
        self.bar.close()


# Generation: shard stores.


def _sharded(world: World, path: Path) -> bool:
    """Written through shard stores: several processes, or shards left by an earlier launch."""
    return world.size > 1 or bool(shard_stores.shard_paths(path))


def open_stores(
    world: World, outputs: Sequence[tuple[Path, StoreMeta]], ids: Sequence[str], labels: np.ndarray
) -> list[tuple[SaliencyStore, set[int]]]:
    """For each (final store path, run metadata): the store this process writes, and its rows.

    With one process and no shard stores: the final store itself (`create_or_resume`) and its rows
    not done. Otherwise process 0 finds the rows done in the final store and in every shard store of
    any earlier launch, the rows still missing for some method are split among the processes
    (`World.shard`), and each process writes its part into its own shard store.
    """
    if not any(_sharded(world, path) for path, _ in outputs):
        stores = [create_or_resume(path, meta, ids, labels) for path, meta in outputs]
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
            store = create_or_resume(shard, meta, ids, labels)
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


# Evaluation: per-process checkpoints and the gathering of results.


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
