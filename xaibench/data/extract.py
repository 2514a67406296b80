"""Safe tar extraction: nothing is written outside the destination, and a re-run finishes the job.

Refused, before anything of the entry is written: absolute names, names with `..`, symbolic or hard
links whose target lies outside the destination, and device files or FIFOs. Each file is written
under a temporary name and renamed when complete, so a killed extraction leaves no truncated file
under a final name; a re-run skips the files already there with the right size. `extract_once`
adds a marker file written when the whole archive is extracted, so a later run skips it and a
killed one is extracted again.
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
    """A tar entry that would write outside the destination, or is not a file, folder or link."""


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


def _check_link(member: tarfile.TarInfo, target: Path, root: Path, archive: Path) -> Path:
    """The path a link entry points to, refused when it lies outside `root`."""
    link = member.linkname.replace("\\", "/")
    if PurePosixPath(link).is_absolute():
        raise UnsafeArchiveError(
            f"{archive}: link {member.name!r} -> {member.linkname!r} is absolute; refused"
        )
    # A symbolic link is relative to its own folder, a hard link to the archive root.
    pointee = (target.parent if member.issym() else root) / link
    if not _inside(root, pointee):
        raise UnsafeArchiveError(
            f"{archive}: link {member.name!r} -> {member.linkname!r} points outside the "
            "destination; refused"
        )
    return Path(os.path.normpath(pointee))


def safe_extract(
    archive: Path,
    dest: Path,
    place: Callable[[str], str | None] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Extract `archive` (tar, any compression) under `dest`; returns the paths of its files.

    `place(name) -> relative path | None` renames an entry (None skips it), e.g. to flatten
    folders. Every entry is checked against `dest` after renaming, including links.
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
    target = root / name
    if not _inside(root, target) or not _inside(root, target.resolve()):
        raise UnsafeArchiveError(
            f"{archive}: entry {member.name!r} resolves outside {root}; refused"
        )
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return []
    if member.issym() or member.islnk():
        pointee = _check_link(member, target, root, archive)
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_symlink() and not target.exists():
            if member.issym():
                os.symlink(member.linkname, target)
            else:
                os.link(pointee, target)
        return [target]
    if not member.isfile():
        raise UnsafeArchiveError(
            f"{archive}: entry {member.name!r} is a device file or FIFO; refused"
        )
    if not (target.is_file() and target.stat().st_size == member.size):
        with tar.extractfile(member) as source:
            write_stream_atomic(target, source)
    return [target]
