"""Atomic file writes: write under a temporary name next to the target, then rename.

A reader, or a run killed half-way, never sees half a file under the final name.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` to a hidden temporary path beside `path` (folders created), then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
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
