"""The archives xaibench can fetch, in one table, and their verified download.

Each archive has a file name, and where published: its size, md5 and sha256, and a pinned URL
(ImageNet's archives have none: they need an account, so the user gives a server or the files).
A download resumes where the last one stopped (HTTP Range), retries with exponential backoff, is
hashed while it streams in (no second pass over the file), and gets its final name only once its
size and checksums match. A file the user gives (`given`) is verified in place and never moved,
changed or deleted.

Checksum sources, each a published value, never one computed here:
- ImageNet: the md5s published with the archives on image-net.org (torchvision's
  `datasets/imagenet.py` pins the same); the images archive's size and sha256 are TensorFlow
  Datasets' `imagenet2012/checksums.tsv`; the devkit's sha256 is torchvision's (its prototype
  `datasets/_builtin/imagenet.py`). No size is published for the devkit and no size or sha256 for
  the boxes archive, so md5 alone is checked for the latter.
- Imagenette: the md5s of torchvision's `datasets/imagenette.py`; sizes and sha256 of TensorFlow
  Datasets' `imagenette/checksums.tsv` (its sizes are also fast.ai's own, below).
- Imagewoof: fast.ai's own checks (`fastai/data/download_checks.py`): the size and the md5 of the
  first MiB (`head_md5`), which is all its publisher records. The whole-file sha256s found in
  public code disagree (the archives were re-uploaded), so none is pinned; `expected_sha256`
  checks one the user trusts in addition. Every verified archive's sha256 is recorded in
  `DEST/.NAME.verified`.
- ImageNetV2: size and sha256 of TensorFlow Datasets' `imagenet_v2/checksums.tsv`.
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

from xaibench.core.atomic import write_text_atomic
from xaibench.core.errors import ConfigError, DataError
from xaibench.core.progress import progress_bar

CHUNK_BYTES = 1 << 20
HEAD_BYTES = 1 << 20  # fast.ai's check hashes the first MiB of an archive
DIGEST_NAMES = {"md5": "md5", "sha256": "sha256", "head_md5": "md5 of the first MiB"}
FAST_AI = "https://s3.amazonaws.com/fast-ai-imageclas"
IMAGENETV2 = "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main"


class ChecksumError(DataError):
    """An archive whose size or checksum is not the published one."""


class DownloadError(DataError):
    """A download that failed after its retries; the partial file is kept for the next run."""


@dataclass(frozen=True)
class Archive:
    """One archive: `size` in bytes, hex digests, and a pinned `url` (None: the user gives one).

    `head_md5` is the md5 of the first `HEAD_BYTES` bytes, for archives whose publisher records
    only that (with the size).
    """

    filename: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None
    url: str | None = None
    head_md5: str | None = None

    @property
    def pinned(self) -> bool:
        return any(digest is not None for digest in (self.md5, self.sha256, self.head_md5))

    def expected(self) -> dict[str, str]:
        """The pinned digests by kind ("md5", "sha256", "head_md5")."""
        digests = {"md5": self.md5, "sha256": self.sha256, "head_md5": self.head_md5}
        return {kind: value for kind, value in digests.items() if value is not None}


ARCHIVES: dict[str, Archive] = {
    "imagenet-val": Archive(
        "ILSVRC2012_img_val.tar",
        6_744_924_160,
        "29b22e2961454d5413ddabcf34fc5622",
        "c7e06a6c0baccf06d8dbeb6577d71efff84673a5dbdd50633ab44f8ea0456ae0",
    ),
    "imagenet-devkit": Archive(
        "ILSVRC2012_devkit_t12.tar.gz",
        md5="fa75699e90414af021442c21a62c3abf",
        sha256="b59243268c0d266621fd587d2018f69e906fb22875aca0e295b48cafaa927953",
    ),
    "imagenet-val-boxes": Archive(
        "ILSVRC2012_bbox_val_v3.tgz", md5="f4cd18b5ea29fe6bbea62ec9c20d80f0"
    ),
    "imagenette2": Archive(
        "imagenette2.tgz",
        1_557_161_267,
        "fe2fc210e6bb7c5664d602c3cd71e612",
        "6cbfac238434d89fe99e651496f0812ebc7a10fa62bd42d6874042bf01de4efd",
        f"{FAST_AI}/imagenette2.tgz",
    ),
    "imagenette2-320": Archive(
        "imagenette2-320.tgz",
        341_663_724,
        "3df6f0d01a2c9592104656642f5e78a3",
        "569b4497c98db6dd29f335d1f109cf315fe127053cedf69010d047f0188e158c",
        f"{FAST_AI}/imagenette2-320.tgz",
    ),
    "imagenette2-160": Archive(
        "imagenette2-160.tgz",
        99_003_388,
        "e793b78cc4c9e9a4ccc0c1155377a412",
        "64d0c4859f35a461889e0147755a999a48b49bf38a7e0f9bd27003f10db02fe5",
        f"{FAST_AI}/imagenette2-160.tgz",
    ),
    "imagewoof2": Archive(
        "imagewoof2.tgz",
        1_343_715_595,
        url=f"{FAST_AI}/imagewoof2.tgz",
        head_md5="2cc1c1e36e20cb6fd24ffb978edcb487",
    ),
    "imagewoof2-320": Archive(
        "imagewoof2-320.tgz",
        328_387_740,
        url=f"{FAST_AI}/imagewoof2-320.tgz",
        head_md5="7a1fd92672a559a85de76e4810a20c21",
    ),
    "imagewoof2-160": Archive(
        "imagewoof2-160.tgz",
        92_612_825,
        url=f"{FAST_AI}/imagewoof2-160.tgz",
        head_md5="3559b194123981a540b87132dbda412f",
    ),
    "imagenetv2-matched-frequency": Archive(
        "imagenetv2-matched-frequency.tar.gz",
        1_264_079_360,
        sha256="f0c37fdf925916b19ea1323cd9a2208cdb6959ba2c32eef2a7fc393835c9ca7c",
        url=f"{IMAGENETV2}/imagenetv2-matched-frequency.tar.gz",
    ),
}


@dataclass(frozen=True)
class Stall:
    """When a download counts as stalled: no byte for `timeout` seconds (one socket read), or
    fewer than `min_rate` bytes per second on average over `window` seconds."""

    timeout: float = 60.0
    min_rate: float = 1024.0
    window: float = 120.0


STALL = Stall()
"""The stall bound of downloads unless one is given."""


class StalledError(DownloadError):
    """A connection that delivers too few bytes per second (`Stall`)."""


class _RateGuard:
    """Counts the bytes of one connection; StalledError once a `stall.window` ends with fewer than
    `stall.min_rate` bytes per second since it began."""

    def __init__(self, stall: Stall):
        self.stall = stall
        self.start, self.bytes = time.monotonic(), 0

    def add(self, count: int) -> None:
        self.bytes += count
        elapsed = time.monotonic() - self.start
        if elapsed < self.stall.window:
            return
        if self.bytes < self.stall.min_rate * elapsed:
            raise StalledError(
                f"{self.bytes:,} bytes in the last {elapsed:.0f} s, below the minimum "
                f"{self.stall.min_rate:,.0f} bytes/s"
            )
        self.start, self.bytes = time.monotonic(), 0


class Hashes:
    """md5 and sha256 of a byte stream, and md5 of its first `HEAD_BYTES`, fed chunk by chunk."""

    def __init__(self) -> None:
        self.md5, self.sha256, self.head_md5 = hashlib.md5(), hashlib.sha256(), hashlib.md5()
        self.head_left = HEAD_BYTES

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.sha256.update(chunk)
        if self.head_left:
            self.head_md5.update(chunk[: self.head_left])
            self.head_left -= min(len(chunk), self.head_left)

    def hexdigests(self) -> dict[str, str]:
        return {
            "md5": self.md5.hexdigest(),
            "sha256": self.sha256.hexdigest(),
            "head_md5": self.head_md5.hexdigest(),
        }


def file_digests(path: Path, progress: bool = False) -> dict[str, str]:
    """{"md5", "sha256", "head_md5": hex} of a file, hashed in one streamed pass."""
    return _hash_into(Hashes(), path, progress).hexdigests()


def _hash_into(hashes: Hashes, path: Path, progress: bool) -> Hashes:
    with (
        open(path, "rb") as handle,
        progress_bar(
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
    expected = expected_digests(archive, expected_sha256)
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        raise ChecksumError(
            f"{path} has {size:,} bytes, expected {archive.size:,} for {archive.filename}"
        )
    actual = digests or file_digests(path, progress)
    for kind, value in expected.items():
        if actual[kind] != value:
            raise ChecksumError(
                f"checksum mismatch for {path}: expected {DIGEST_NAMES[kind]} {value}, "
                f"got {actual[kind]}"
            )
    if not expected:
        raise ChecksumError(
            f"no checksum is published for {archive.filename}; {path} has sha256 "
            f"{actual['sha256']}: check it against a source you trust and run again with "
            f"`expected_sha256` {actual['sha256']}"
        )
    return actual


def expected_digests(archive: Archive, expected_sha256: str | None) -> dict[str, str]:
    """The pinned digests by kind, with the user's `expected_sha256` (lower-cased) as the sha256;
    ConfigError when it contradicts the pinned sha256."""
    expected = archive.expected()
    if expected_sha256:
        trusted = expected_sha256.lower()
        if archive.sha256 and archive.sha256 != trusted:
            raise ConfigError(
                f"{expected_sha256} differs from the pinned sha256 {archive.sha256} "
                f"of {archive.filename}; leave `expected_sha256` out",
                param="expected_sha256",
            )
        expected["sha256"] = trusted
    return expected


def _stamp_path(dest: Path, filename: str) -> Path:
    return dest / f".{filename}.verified"


def _stamp_of(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _verified_before(dest: Path, path: Path, archive: Archive, expected_sha256: str | None) -> bool:
    """Whether `path` passed verification before, has not changed since (size, mtime), and its
    recorded digests are the ones pinned now (a pin added since makes it checked again)."""
    try:
        stamp = json.loads(_stamp_path(dest, path.name).read_text())
    except (OSError, ValueError):
        return False
    same_file = {k: stamp.get(k) for k in ("path", "size", "mtime_ns")} == _stamp_of(path)
    expected = expected_digests(archive, expected_sha256)
    return same_file and all(stamp.get(kind) == value for kind, value in expected.items())


def verified_record(dest: Path, path: Path) -> dict[str, str | int]:
    """{"archive": file name, "size", "sha256"} of `path` as its verification into `dest`
    recorded them (`fetch` verifies every archive it returns): what files extracted from it came
    from."""
    stamp = json.loads(_stamp_path(dest, path.name).read_text())
    return {"archive": path.name, "size": stamp["size"], "sha256": stamp["sha256"]}


def _write_stamp(dest: Path, path: Path, digests: dict[str, str]) -> None:
    write_text_atomic(_stamp_path(dest, path.name), json.dumps({**_stamp_of(path), **digests}))


def _verify_once(
    dest: Path,
    path: Path,
    archive: Archive,
    expected_sha256: str | None,
    progress: bool,
    advice: str,
) -> None:
    """Verify `path` unless it was verified before and is unchanged; `advice` ends the error."""
    if _verified_before(dest, path, archive, expected_sha256):
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
    stall: Stall = STALL,
    progress: bool = True,
) -> dict[str, str]:
    """Download `url` into `partial`, resuming from the bytes already there (HTTP Range).

    Returns the file's digests (`Hashes`: md5 and sha256 of the whole file, md5 of its first
    `HEAD_BYTES`), hashed as the bytes arrive (the bytes of an earlier run are hashed first).
    A connection that stalls (`stall`: no byte for `stall.timeout` seconds, or below
    `stall.min_rate` bytes/s over `stall.window` seconds) is a failure. Retries `retries` times
    after a failure, waiting `backoff * 2**attempt` seconds; the file is left in place on failure
    so the next run resumes. A server that ignores Range restarts the file.
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
                urllib.request.Request(url, headers=headers), timeout=stall.timeout
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
                    progress_bar(
                        total=total,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=partial.name.removesuffix(".partial"),
                        disable=not progress,
                    ) as bar,
                ):
                    guard = _RateGuard(stall)
                    while chunk := response.read1(CHUNK_BYTES):  # what one socket read brings
                        out.write(chunk)
                        hashes.update(chunk)
                        hashed += len(chunk)
                        bar.update(len(chunk))
                        guard.add(len(chunk))
            if total is None or hashed == total:
                return hashes.hexdigests()
            error = DownloadError(f"connection closed at {hashed:,} of {total:,} bytes")
        except urllib.error.HTTPError as failure:
            if failure.code == 416 and have:
                return hashes.hexdigests()  # nothing beyond the bytes we hold: complete
            if failure.code in (401, 403, 404):
                raise DownloadError(
                    f"{url}: HTTP {failure.code} {failure.reason}; check the URL "
                    "(`url_base`) and that the server holds the file"
                ) from None
            error = failure
        except (StalledError, urllib.error.URLError, http.client.HTTPException, OSError) as failure:
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
    stall: Stall = STALL,
) -> Path:
    """The verified archive: the user's file `given`, or `dest/filename`, downloaded when missing
    (`download`, with `retries`, `backoff` and `stall`).

    A download goes to `dest/filename.partial` and is renamed to `dest/filename` only once
    verified; a bad download is removed (the next run fetches it afresh), a bad file the user gave
    is left as it is. A file verified before and unchanged since is not hashed again.
    """
    expected_digests(archive, expected_sha256)  # a contradiction is refused before any transfer
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise ConfigError(f"{given} is not a file", param="given")
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
    streamed = download(url, partial, archive.size, retries, backoff, stall, progress)
    try:
        digests = verify_file(partial, archive, expected_sha256, digests=streamed)
    except ChecksumError as error:
        if archive.pinned or expected_sha256:
            partial.unlink()
            raise ChecksumError(
                f"{error}. The download was removed: run again to fetch it afresh."
            ) from None
        raise  # no checksum to compare: the file stays for a run with `expected_sha256`
    os.replace(partial, target)
    _write_stamp(dest, target, digests)
    return target
