"""Safe tar extraction: only files and folders, nothing outside the destination, and a re-run
finishes the job.

Refused, before anything of the entry is written: absolute names, names with `..`, and every entry
that is neither a regular file nor a folder (symbolic and hard links, device files, FIFOs): the
archives xaibench reads hold none, and a link, even one whose name looks inside, can lead the
kernel outside the destination (`d -> .` then `x -> d/../../outside`). Each file is written under
a temporary name and renamed when complete, so a killed extraction leaves no truncated file under a
final name; a re-run skips the files already there with the right size. `extract_once` adds a
marker file written when the whole archive is extracted, so a later run skips it and a killed one
is extracted again.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from xaibench.core.atomic import write_stream_atomic, write_text_atomic
from xaibench.core.errors import DataError
from xaibench.core.progress import progress_bar


class UnsafeArchiveError(DataError):
    """A tar entry that would write outside the destination, or is not a file or folder."""


def _entry_name(member: tarfile.TarInfo, archive: Path) -> str:
    """The entry's normalised relative name; UnsafeArchiveError if it is absolute or has `..`."""
    name = member.name.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: entry {member.name!r} has an absolute path; refused")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: entry {member.name!r} contains '..'; refused")
    return PurePosixPath(*[p for p in path.parts if p != "."]).as_posix()


def _inside(root: Path, path: str | Path) -> bool:
    resolved = Path(os.path.normpath(path))
    return resolved == root or root in resolved.parents


def safe_extract(
    archive: Path,
    dest: Path,
    place: Callable[[str], str | None] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Extract `archive` (tar, any compression) under `dest`; returns the paths of its files.

    `place(name) -> relative path | None` renames an entry (None skips it), e.g. to flatten
    folders. Every entry kept is checked against `dest` after renaming; a link, device file or
    FIFO refuses the archive (UnsafeArchiveError naming the entry).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    written: list[Path] = []
    try:
        with (
            tarfile.open(archive) as tar,
            progress_bar(
                unit="file", desc=f"extracting {archive.name}", disable=not progress
            ) as bar,
        ):
            for member in tar:
                written += _extract_member(tar, member, root, archive, place)
                bar.update()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(
            f"cannot extract {archive} into {dest} ({error}); if the archive is damaged or "
            "truncated, download it again"
        ) from None
    return written


def extract_once(
    archive: Path,
    dest: Path,
    marker: Path,
    place: Callable[[str], str | None] | None = None,
    progress: bool = True,
) -> None:
    """`safe_extract(archive, dest, place)` unless `marker` exists; `marker` (the archive's name)
    is written once every entry is extracted, so a run killed half-way is completed by the next."""
    if marker.exists():
        return
    safe_extract(archive, dest, place, progress)
    write_text_atomic(marker, f"{Path(archive).name}\n")


def _extract_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    root: Path,
    archive: Path,
    place: Callable[[str], str | None] | None,
) -> list[Path]:
    """Check and write one entry under `root`; returns the path written (or kept), if any."""
    name = _entry_name(member, archive)
    if place is not None and not member.isdir():
        name = place(name)
    if not name:
        return []
    if not (member.isdir() or member.isfile()):
        raise UnsafeArchiveError(
            f"{archive}: entry {member.name!r} is {_kind(member)}, not a file or folder; an "
            "image archive holds only files and folders: refused"
        )
    target = root / name
    if not _inside(root, target) or not _inside(root, target.resolve()):
        raise UnsafeArchiveError(
            f"{archive}: entry {member.name!r} resolves outside {root}; refused"
        )
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return []
    if not (target.is_file() and target.stat().st_size == member.size):
        with tar.extractfile(member) as source:
            write_stream_atomic(target, source)
    return [target]


def _kind(member: tarfile.TarInfo) -> str:
    """What a tar entry that is neither a file nor a folder is, for a message."""
    if member.issym():
        return f"a symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"a hard link to {member.linkname!r}"
    return "a FIFO" if member.isfifo() else "a device file"
