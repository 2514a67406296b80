"""Atomic file writes: write under a temporary name next to the target, then rename.

A reader, or a run killed half-way, never sees half a file under the final name.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from xaibench.core.errors import ConfigError

REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
"""errno of a write the file system refuses: a full disk, a quota, a read-only or forbidden
folder (an error of the data being written, such as a failed read of a stream, is not one)."""


def writable_folder(path: Path) -> Path:
    """`path` if it is a folder, or can be made one, that files can be written to; else a
    ConfigError naming it: a file, a read-only folder or file system, a full disk. Creates
    nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file; give a folder")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{existing} is a file, so {path} cannot be a folder")
    status = os.statvfs(existing)
    if status.f_flag & os.ST_RDONLY or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{existing} is read-only; give a folder you can write to")
    if status.f_blocks and not status.f_bavail:
        raise ConfigError(
            f"the disk of {existing} is full; free space on it or give a folder on another disk"
        )
    return path


def refused(path: Path, error: OSError) -> ConfigError:
    """The error for a write to `path` that the file system refused with `error`."""
    advice = (
        "free space on its disk or write elsewhere"
        if error.errno in (errno.ENOSPC, errno.EDQUOT)
        else "give a folder you can write to"
    )
    return ConfigError(f"cannot write {path}: {error.strerror}; {advice}")


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` to a hidden temporary path beside `path` (folders created), then rename it.

    A write the file system refuses (`REFUSED`: full, read-only, forbidden), or a folder that
    cannot be made, is a ConfigError naming the path."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise refused(path.parent, error) from error
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as error:
        if error.errno not in REFUSED:
            raise
        raise refused(path, error) from error
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """`text` as UTF-8 to `path`, atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, "utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """`data` to `path`, atomically."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_stream_atomic(path: Path, stream: BinaryIO, chunk_bytes: int = 1 << 20) -> Path:
    """The rest of the readable binary `stream` to `path`, `chunk_bytes` at a time, atomically."""

    def copy(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            shutil.copyfileobj(stream, out, chunk_bytes)

    return write_atomic(path, copy)
