"""Store writes on a background thread, so compute does not wait on compression and file I/O.

`BackgroundWriter` wraps any store's `write`: each call queues the rows and returns; one thread
writes them in order. The queue holds at most `depth` batches, so a slow disk holds the run back
instead of filling memory. A write that fails stops the writing: its error comes back, as a
StoreError naming the store (the store's own, such as a full disk's), from the next `write` and
from `close`; the batches queued after it are not written; the rows written before it stay
in the store (each store write marks rows done only after their maps are in the file, so a killed
run also leaves only complete done rows). `close` writes everything queued, then closes the store.

The caller hands the arrays over: it must not change them after `write`.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from xaibench.core.checks import positive_int
from xaibench.core.errors import StoreError
from xaibench.store.base import Rows, StoreWriter

DEFAULT_DEPTH = 3
_DONE = object()


class BackgroundWriter:
    """`write` and `close` of `store`, with the writes done by a background thread; a
    `StoreWriter` itself."""

    def __init__(self, store: StoreWriter, depth: int = DEFAULT_DEPTH):
        positive_int(depth, "depth")
        self.store = store
        self.path: Path = store.path
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"xaibench-writer:{store.path.name}", daemon=True
        )
        self._thread.start()

    def write(self, rows: Rows) -> None:
        """Queue `rows` for `store.write` (waits while `depth` batches are queued)."""
        if self._closed:
            raise StoreError(f"{self.path}: the background writer is closed")
        self._raise_failure()
        self._queue.put(rows)

    def close(self) -> None:
        """Write what is queued, stop the thread and close the store; re-raise a write failure."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_DONE)
        self._thread.join()
        try:
            self._raise_failure()
        finally:
            self.store.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            if self._error is None:
                try:
                    self.store.write(item)
                except BaseException as error:
                    self._error = error

    def _raise_failure(self) -> None:
        error = self._error
        if error is None:
            return
        if not isinstance(error, Exception) or isinstance(error, StoreError):
            raise error  # KeyboardInterrupt, SystemExit, a store's own error: pass them on as such
        raise StoreError(
            f"{self.path}: background write failed ({type(error).__name__}: {error}); the rows "
            "written before it are kept, re-run the same command to resume"
        ) from error
