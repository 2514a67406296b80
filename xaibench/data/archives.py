"""The archives xaibench can fetch, in one table, and their verified download.

Each archive has a file name, and where published: its size, md5 and sha256, and a pinned URL
(ImageNet's archives have none: they need an account, so the user gives a server or the files).
A download resumes where the last one stopped (HTTP Range), retries with exponential backoff, is
hashed while it streams in (no second pass over the file), and gets its final name only once its
size and checksums match. A file the user gives (`--archive`) is verified in place and never moved,
changed or deleted.

Checksum sources: ImageNet's md5s are those published with the archives on image-net.org
(torchvision's `datasets/imagenet.py` pins the same for the images and the devkit); Imagenette's md5s are torchvision's `datasets/imagenette.py`
pins (only md5 is published for the current archives, so only md5 and not the size is checked);
ImageNetV2's size and sha256 are TensorFlow Datasets' `imagenet_v2/checksums.tsv`. Imagewoof's
published md5s disagree between sources (the archives were re-uploaded), so none is pinned: its
verification is explicit (`expected_sha256`, the `--sha256` option), see `fetch`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from xaibench.errors import ConfigError, DataError

CHUNK_BYTES = 1 << 20
FAST_AI = "https://s3.amazonaws.com/fast-ai-imageclas"
IMAGENETV2 = "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main"


class ChecksumError(DataError):
    """An archive whose size or checksum is not the published one."""


class DownloadError(DataError):
    """A download that failed after its retries; the partial file is kept for the next run."""


@dataclass(frozen=True)
class Archive:
    """One archive: `size` in bytes, hex digests, and a pinned `url` (None: the user gives one)."""

    filename: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    url: str | None = None

    @property
    def pinned(self) -> bool:
        return self.md5 is not None or self.sha256 is not None


ARCHIVES: dict[str, Archive] = {
    "imagenet-val": Archive(
        "ILSVRC2012_img_val.tar", 6_744_924_160, "29b22e2961454d5413ddabcf34fc5622"
    ),
    "imagenet-devkit": Archive(
        "ILSVRC2012_devkit_t12.tar.gz", md5="fa75699e90414af021442c21a62c3abf"
    ),
    "imagenet-val-boxes": Archive(
        "ILSVRC2012_bbox_val_v3.tgz", md5="f4cd18b5ea29fe6bbea62ec9c20d80f0"
    ),
    "imagenette2": Archive(
        "imagenette2.tgz", md5="fe2fc210e6bb7c5664d602c3cd71e612", url=f"{FAST_AI}/imagenette2.tgz"
    ),
    "imagenette2-320": Archive(
        "imagenette2-320.tgz",
        md5="3df6f0d01a2c9592104656642f5e78a3",
        url=f"{FAST_AI}/imagenette2-320.tgz",
    ),
    "imagenette2-160": Archive(
        "imagenette2-160.tgz",
        md5="e793b78cc4c9e9a4ccc0c1155377a412",
        url=f"{FAST_AI}/imagenette2-160.tgz",
    ),
    "imagewoof2": Archive("imagewoof2.tgz", url=f"{FAST_AI}/imagewoof2.tgz"),
    "imagewoof2-320": Archive("imagewoof2-320.tgz", url=f"{FAST_AI}/imagewoof2-320.tgz"),
    "imagewoof2-160": Archive("imagewoof2-160.tgz", url=f"{FAST_AI}/imagewoof2-160.tgz"),
    "imagenetv2-matched-frequency": Archive(
        "imagenetv2-matched-frequency.tar.gz",
        1_264_079_360,
        sha256="f0c37fdf925916b19ea1323cd9a2208cdb6959ba2c32eef2a7fc393835c9ca7c",
        url=f"{IMAGENETV2}/imagenetv2-matched-frequency.tar.gz",
    ),
}


class Hashes:
    """md5 and sha256 of a byte stream, fed chunk by chunk."""

    def __init__(self) -> None:
        self.md5, self.sha256 = hashlib.md5(), hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.sha256.update(chunk)

    def hexdigests(self) -> dict[str, str]:
        return {"md5": self.md5.hexdigest(), "sha256": self.sha256.hexdigest()}


def file_digests(path: Path, progress: bool = False) -> dict[str, str]:
    """{"md5": hex, "sha256": hex} of a file, hashed in one streamed pass."""
    return _hash_into(Hashes(), path, progress).hexdigests()


def _hash_into(hashes: Hashes, path: Path, progress: bool) -> Hashes:
    with (
        open(path, "rb") as handle,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"checking {path.name}",
            disable=not progress,
        ) as bar,
    ):
        while chunk := handle.read(CHUNK_BYTES):
            hashes.update(chunk)
            bar.update(len(chunk))
    return hashes


def verify_file(
    path: Path,
    archive: Archive,
    expected_sha256: str | None = None,
    progress: bool = False,
    digests: dict[str, str] | None = None,
) -> dict[str, str]:
    """Check size and every known checksum of `path`; ChecksumError naming the file otherwise.

    `digests` are the file's checksums when already computed (while downloading), else the file
    is hashed. `expected_sha256` (from the user) is checked in addition to the table's checksums.
    An archive with no checksum at all raises ChecksumError that prints the computed sha256.
    """
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        raise ChecksumError(
            f"{path} has {size:,} bytes, expected {archive.size:,} for {archive.filename}"
        )
    actual = digests or file_digests(path, progress)
    expected = {"md5": archive.md5, "sha256": archive.sha256}
    if expected_sha256:
        if archive.sha256 and archive.sha256 != expected_sha256.lower():
            raise ConfigError(
                f"--sha256 {expected_sha256} differs from the pinned sha256 {archive.sha256} "
                f"of {archive.filename}; leave --sha256 out"
            )
        expected["sha256"] = expected_sha256.lower()
    for kind, value in expected.items():
        if value is not None and actual[kind] != value:
            raise ChecksumError(
                f"checksum mismatch for {path}: expected {kind} {value}, got {actual[kind]}"
            )
    if not any(expected.values()):
        raise ChecksumError(
            f"no checksum is published for {archive.filename}; {path} has sha256 "
            f"{actual['sha256']}: check it against a source you trust and run again with "
            f"--sha256 {actual['sha256']}"
        )
    return actual


def _stamp_path(dest: Path, filename: str) -> Path:
    return dest / f".{filename}.verified"


def _stamp_of(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _verified_before(dest: Path, path: Path, expected_sha256: str | None) -> bool:
    """Whether `path` passed verification before and has not changed since (size, mtime)."""
    try:
        stamp = json.loads(_stamp_path(dest, path.name).read_text())
    except (OSError, ValueError):
        return False
    same_file = {k: stamp.get(k) for k in ("path", "size", "mtime_ns")} == _stamp_of(path)
    return same_file and (not expected_sha256 or stamp.get("sha256") == expected_sha256.lower())


def _write_stamp(dest: Path, path: Path, digests: dict[str, str]) -> None:
    stamp = _stamp_path(dest, path.name)
    partial = stamp.with_name(stamp.name + ".partial")
    partial.write_text(json.dumps({**_stamp_of(path), **digests}))
    os.replace(partial, stamp)


def _verify_once(
    dest: Path,
    path: Path,
    archive: Archive,
    expected_sha256: str | None,
    progress: bool,
    advice: str,
) -> None:
    """Verify `path` unless it was verified before and is unchanged; `advice` ends the error."""
    if _verified_before(dest, path, expected_sha256):
        return
    try:
        digests = verify_file(path, archive, expected_sha256, progress)
    except ChecksumError as error:
        raise ChecksumError(f"{error}. {advice}") from None
    _write_stamp(dest, path, digests)


def download(
    url: str,
    partial: Path,
    size: int | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> dict[str, str]:
    """Download `url` into `partial`, resuming from the bytes already there (HTTP Range).

    Returns the md5 and sha256 of the whole file, hashed as the bytes arrive (the bytes of an
    earlier run are hashed first). Retries `retries` times after a failure, waiting
    `backoff * 2**attempt` seconds; the file is left in place on failure so the next run resumes.
    A server that ignores Range restarts the file.
    """
    error: Exception | None = None
    hashes, hashed = Hashes(), 0
    if partial.exists() and (size is None or partial.stat().st_size <= size):
        hashed = partial.stat().st_size
        _hash_into(hashes, partial, progress)
    for attempt in range(retries + 1):
        have = partial.stat().st_size if partial.exists() else 0
        if have != hashed:  # larger than the archive, or changed by someone else: start again
            partial.unlink(missing_ok=True)
            hashes, hashed, have = Hashes(), 0, 0
        if size is not None and have == size:
            return hashes.hexdigests()
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers), timeout=timeout
            ) as response:
                resumed = response.status == 206 and response.headers.get(
                    "Content-Range", ""
                ).startswith(f"bytes {have}-")
                if have and not resumed:  # the server sends the whole file
                    hashes, hashed, have = Hashes(), 0, 0
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else size
                with (
                    open(partial, "ab" if have else "wb") as out,
                    tqdm(
                        total=total,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=partial.name.removesuffix(".partial"),
                        disable=not progress,
                    ) as bar,
                ):
                    while chunk := response.read(CHUNK_BYTES):
                        out.write(chunk)
                        hashes.update(chunk)
                        hashed += len(chunk)
                        bar.update(len(chunk))
            if total is None or hashed == total:
                return hashes.hexdigests()
            error = DownloadError(f"connection closed at {hashed:,} of {total:,} bytes")
        except urllib.error.HTTPError as failure:
            if failure.code == 416 and have:
                return hashes.hexdigests()  # nothing beyond the bytes we hold: complete
            if failure.code in (401, 403, 404):
                raise DownloadError(
                    f"{url}: HTTP {failure.code} {failure.reason}; check the URL "
                    "(--url-base) and that the server holds the file"
                ) from None
            error = failure
        except (urllib.error.URLError, http.client.HTTPException, OSError) as failure:
            error = failure
        if attempt < retries:
            time.sleep(backoff * 2**attempt)
    have = partial.stat().st_size if partial.exists() else 0
    kept = f"{have:,} bytes are kept in {partial}: " if have else ""
    raise DownloadError(
        f"could not download {url} after {retries + 1} attempt(s) ({error}); "
        f"{kept}run the same command again to resume"
    )


def fetch(
    archive: Archive,
    dest: Path,
    url: str | None = None,
    given: Path | None = None,
    expected_sha256: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """The verified archive: the user's file `given`, or `dest/filename`, downloaded when missing.

    A download goes to `dest/filename.partial` and is renamed to `dest/filename` only once
    verified; a bad download is removed (the next run fetches it afresh), a bad file the user gave
    is left as it is. A file verified before and unchanged since is not hashed again.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise ConfigError(f"--archive {given} is not a file")
        _verify_once(dest, given, archive, expected_sha256, progress, "The file was left as it is.")
        return given
    target = dest / archive.filename
    if target.is_file():
        advice = f"Remove {target} to download it again, or replace it."
        _verify_once(dest, target, archive, expected_sha256, progress, advice)
        return target
    if url is None:
        raise ConfigError(f"no source for {archive.filename}")
    partial = dest / f"{archive.filename}.partial"
    streamed = download(url, partial, archive.size, retries, backoff, progress=progress)
    try:
        digests = verify_file(partial, archive, expected_sha256, digests=streamed)
    except ChecksumError as error:
        if archive.pinned or expected_sha256:
            partial.unlink()
            raise ChecksumError(
                f"{error}. The download was removed: run again to fetch it afresh."
            ) from None
        raise  # no checksum to compare: the file stays for the --sha256 run
    os.replace(partial, target)
    _write_stamp(dest, target, digests)
    return target
