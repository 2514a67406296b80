"""The processes of a run: `World` and its collectives, `launch` under torchrun, per-process logs."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as torch_dist

from xaibench.core.errors import ConfigError, MainProcessError
from xaibench.dist.progress import Progress

log = logging.getLogger(__name__)
T = TypeVar("T")

# Processes wait for each other at the end of a run; shards differ in size by one image, but images
# do not all take the same time, and process 0 merges the stores while the others wait.
COLLECTIVE_TIMEOUT = timedelta(hours=2)
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

    def on_main(self, work: Callable[[], T]) -> T | None:
        """`work()` on process 0 while the others wait; its result on process 0, None elsewhere.

        A failure of `work` reaches every process: process 0 raises it, the others raise
        `MainProcessError` naming it, instead of waiting at their next collective for a process
        that has stopped.
        """
        if self.size == 1:
            return work()
        if not self.is_main:
            failure = self.broadcast(None)
            if failure is not None:
                raise MainProcessError(f"process 0 failed, so process {self.rank} stops: {failure}")
            return None
        try:
            result = work()
        except Exception as error:
            self.broadcast(f"{type(error).__name__}: {error}")
            raise
        self.broadcast(None)
        return result

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
            "CUDA device(s); start at most that many processes per node "
            "(`torchrun --nproc-per-node`)"
        )
    return torch.device("cuda", world.local_rank)


@contextmanager
def launch(device: torch.device, log_dir: Path) -> Iterator[World]:
    """The World of this process, with its process group and logging set up for the block.

    In the block, SIGTERM (which torchrun, SLURM and `kill` send to stop a run) raises SystemExit
    with code 143, so that stores are closed and checkpoints saved before the process exits.
    Under torchrun with several processes: the process group is started (its CPU messages through
    Gloo, CUDA tensors through NCCL), each process logs to `log_dir/rank-K.log` and process 0 alone
    writes warnings to stderr. With one process: nothing of this, but a CUDA device is made the
    current one for the block (so that `cuda:1` is not joined by work on GPU 0, such as pinning
    memory for it), and the previous one restored after.
    """
    world = from_env()
    world.device = place(world, device)
    if world.size == 1:
        with _sigterm_exits():
            if world.device.type != "cuda":
                yield world
                return
            with torch.cuda.device(world.device):
                yield world
        return
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    backend = "cpu:gloo,cuda:nccl" if world.device.type == "cuda" else "gloo"
    torch_dist.init_process_group(
        backend, rank=world.rank, world_size=world.size, timeout=COLLECTIVE_TIMEOUT
    )
    logs = _log_to_file(world, Path(log_dir))
    try:
        with _sigterm_exits():
            world.counter = torch_dist.PrefixStore("xaibench", _client_store())
            log.info("process %d of %d on %s", world.rank, world.size, world.device)
            yield world
    finally:
        torch_dist.destroy_process_group()
        _stop_logging(logs)


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


@contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Within: SIGTERM raises SystemExit(143), and the previous handler is restored after. Signal
    handlers belong to the main thread: in another thread the handling is left as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


@dataclass
class _FileLogging:
    """The handlers `_log_to_file` added to the root logger, and the level it had before."""

    handlers: list[logging.Handler]
    level: int


def _log_to_file(world: World, log_dir: Path) -> _FileLogging:
    """Root logging to `log_dir/rank-K.log` (INFO and up); on process 0 also warnings to stderr.

    `_stop_logging` undoes it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [logging.FileHandler(log_dir / f"rank-{world.rank}.log")]
    if world.is_main:
        handlers.append(logging.StreamHandler(sys.stderr))
        handlers[-1].setLevel(logging.WARNING)
    root = logging.getLogger()
    started = _FileLogging(handlers, root.level)
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(_RankFilter(world.rank))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return started


def _stop_logging(started: _FileLogging) -> None:
    """Remove and close the handlers `_log_to_file` added and give the root logger its level back."""
    logging.captureWarnings(False)
    root = logging.getLogger()
    for handler in started.handlers:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(started.level)
