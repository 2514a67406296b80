"""The lock a store writer holds: `STORE.lock` next to the store, so that two runs never write one
store at once, with or without HDF5's own file locking (often off on NFS and Lustre).

The lock file is created with O_CREAT | O_EXCL and holds JSON {"pid", "host", "started"} of its
holder, who also holds `fcntl.flock` on it where the platform has it (a second guard, released by
the kernel when the holder dies). A lock whose holder is a dead process of this host is stale and is
taken over; any other lock is refused with a StoreError naming its holder. The holder removes the
file when it lets go (`release`), also after an error.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from xaibench.core.errors import StoreError

try:
    import fcntl
except ImportError:  # no flock on this platform: the lock file alone guards the store
    fcntl = None

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
# Attempts to take a lock whose file is removed or replaced while it is being examined.
ATTEMPTS = 5


def lock_path(path: Path) -> Path:
    """The lock file of the store at `path`: `runs/vgg16/tgrad.h5.lock`."""
    return path.with_name(path.name + LOCK_SUFFIX)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _flock(fd: int) -> bool:
    """Take flock on `fd` without waiting: False if another open file holds it. Where the file
    system has no flock, True: the lock file alone guards the store."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # ENOLCK, ENOTSUP: a file system without flock
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


class StoreLock:
    """The exclusive write lock of the store at `store`, taken on construction.

    StoreError, naming the holder's process id and host, if another writer holds it.
    """

    def __init__(self, store: Path):
        self.store = Path(store)
        self.path = lock_path(self.store)
        self.holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self._fd: int | None = None
        for _ in range(ATTEMPTS):
            if self._create() or self._take_over():
                return
        raise StoreError(
            f"store {self.store}: its lock file {self.path} keeps changing; another run is "
            "opening the store, wait for it to finish"
        )

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise StoreError(
                    f"store {self.store} is not writable ({error}): its file system is read-only "
                    "or its permissions forbid writing; the results in it are intact: run on a "
                    "writable copy of it, or make it writable"
                ) from None
            raise StoreError(
                f"store {self.store}: cannot create its lock file {self.path} ({error}); the "
                "disk may be full: free space and re-run"
            ) from None
        _flock(fd)
        self._hold(fd)
        return True

    def _take_over(self) -> bool:
        """Take the existing lock file if its holder is gone; False if it vanished meanwhile."""
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            locked = _flock(fd)
            holder = self._read(fd)
            if not _same_file(fd, self.path):  # released and removed while it was read
                os.close(fd)
                return False
            if not locked or not self._stale(holder):
                raise self._refusal(holder)
        except BaseException:
            os.close(fd)
            raise
        log.warning(
            "%s: taking over the lock of process %s on %s, which is no longer running",
            self.store,
            holder.get("pid"),
            holder.get("host"),
        )
        self._hold(fd)
        return True

    def _hold(self, fd: int) -> None:
        """Write this process as the holder into the lock file `fd`, durably, and keep it open."""
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self.holder).encode(), 0)
            os.fsync(fd)
        except OSError as error:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise StoreError(
                f"store {self.store}: cannot write its lock file {self.path} ({error}); the disk "
                "may be full: free space and re-run"
            ) from None
        self._fd = fd

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            holder = json.loads(os.pread(fd, 4096, 0).decode())
        except (OSError, ValueError):
            return {}
        return holder if isinstance(holder, dict) else {}

    def _stale(self, holder: dict) -> bool:
        """True if `holder` is a process of this host that is no longer running."""
        pid = holder.get("pid")
        return (
            isinstance(pid, int) and holder.get("host") == self.holder["host"] and not _alive(pid)
        )

    def _refusal(self, holder: dict) -> StoreError:
        if not holder:
            return StoreError(
                f"store {self.store} is locked by {self.path}, which names no writer; wait if a "
                f"run is writing the store, or delete {self.path} if none is"
            )
        return StoreError(
            f"store {self.store} is being written by process {holder.get('pid')} on host "
            f"{holder.get('host')} (since {holder.get('started')}); wait for that run to finish, "
            f"or delete {self.path} if that run is gone"
        )

    def release(self) -> None:
        """Remove the lock file and let go of it; nothing if not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                self.path.unlink()
        finally:
            os.close(fd)

    def __enter__(self) -> StoreLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
