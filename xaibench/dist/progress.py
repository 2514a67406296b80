"""One progress bar over the rows of every process of a run."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from xaibench.core.progress import progress_bar

if TYPE_CHECKING:
    from xaibench.dist.world import World

log = logging.getLogger(__name__)

# Process 0 redraws the shared progress bar this often while it waits for the others.
PROGRESS_POLL_SECONDS = 0.5
# Each process logs its progress this often.
LOG_SECONDS = 60.0


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
        self.bar = progress_bar(total=total, initial=initial, **tqdm_options)
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
