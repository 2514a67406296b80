"""Downloads against a local HTTP server: resume, retry, checksums; and safe extraction."""

import hashlib
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest
from synthetic_imagenet import ArchiveServer, add_bytes

from xaibench.core.errors import ConfigError
from xaibench.data import archives
from xaibench.data.archives import Archive, ChecksumError, DownloadError, fetch
from xaibench.data.extract import UnsafeArchiveError, safe_extract

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture()
def server():
    with ArchiveServer({"a.tar": PAYLOAD}) as running:
        yield running


def pinned(**changes):
    fields = {"filename": "a.tar", "size": len(PAYLOAD), "md5": MD5}
    return Archive(**{**fields, **changes})


def test_a_cut_download_resumes_on_the_next_run_and_equals_the_source(server, tmp_path):
    server.cut["a.tar"] = 100_000
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        fetch(pinned(), tmp_path, f"{server.url}/a.tar", retries=0, progress=False)
    partial = tmp_path / "a.tar.partial"
    assert partial.stat().st_size == 100_000 and not (tmp_path / "a.tar").exists()

    path = fetch(pinned(), tmp_path, f"{server.url}/a.tar", retries=0, progress=False)
    assert path == tmp_path / "a.tar" and path.read_bytes() == PAYLOAD
    assert server.requests[-1] == ("a.tar", "bytes=100000-")
    assert not partial.exists()


def test_retries_with_backoff_resume_within_one_run(server, tmp_path, monkeypatch):
    waits = []
    monkeypatch.setattr(archives.time, "sleep", waits.append)
    server.cut["a.tar"] = 123_456
    path = fetch(pinned(), tmp_path, f"{server.url}/a.tar", retries=3, backoff=0.5, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert [r for _, r in server.requests] == [None, "bytes=123456-"]
    assert waits == [0.5]


def test_a_fresh_download_is_hashed_as_it_arrives(server, tmp_path, monkeypatch):
    def no_second_pass(*args, **kwargs):
        raise AssertionError("hashed the file after downloading it")

    monkeypatch.setattr(archives, "file_digests", no_second_pass)
    assert fetch(pinned(), tmp_path, f"{server.url}/a.tar", progress=False).read_bytes() == PAYLOAD


def test_a_server_that_ignores_range_restarts_the_file(server, tmp_path):
    server.ranges = False
    (tmp_path / "a.tar.partial").write_bytes(b"stale bytes of another file")
    path = fetch(pinned(), tmp_path, f"{server.url}/a.tar", progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("a.tar", "bytes=27-")]


def test_a_verified_file_is_not_downloaded_or_hashed_again(server, tmp_path, monkeypatch):
    fetch(pinned(), tmp_path, f"{server.url}/a.tar", progress=False)

    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed again")

    monkeypatch.setattr(archives, "file_digests", no_hashing)
    assert fetch(pinned(), tmp_path, f"{server.url}/a.tar", progress=False).read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_md5_mismatch_of_a_download_names_file_and_both_sums(server, tmp_path):
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as error:
        fetch(pinned(md5=wrong), tmp_path, f"{server.url}/a.tar", progress=False)
    message = str(error.value)
    assert "a.tar" in message and wrong in message and MD5 in message
    assert not (tmp_path / "a.tar").exists() and not (tmp_path / "a.tar.partial").exists()


def test_md5_mismatch_of_a_given_file_keeps_it(tmp_path):
    given = tmp_path / "mine" / "a.tar"
    given.parent.mkdir()
    given.write_bytes(PAYLOAD)
    wrong = "f" * 32
    with pytest.raises(ChecksumError) as error:
        fetch(pinned(md5=wrong), tmp_path / "dest", given=given, progress=False)
    message = str(error.value)
    assert str(given) in message and wrong in message and MD5 in message
    assert "left as it is" in message and given.read_bytes() == PAYLOAD
    assert fetch(pinned(), tmp_path / "dest", given=given, progress=False) == given


def test_wrong_size_is_refused_before_hashing(tmp_path):
    given = tmp_path / "a.tar"
    given.write_bytes(PAYLOAD[:-1])
    with pytest.raises(ChecksumError, match="299,999 bytes, expected 300,000"):
        fetch(pinned(), tmp_path / "dest", given=given, progress=False)


def test_an_archive_without_checksum_needs_the_users_sha256(server, tmp_path):
    unpinned = Archive("a.tar", url=f"{server.url}/a.tar")
    with pytest.raises(ChecksumError, match=f"run again with `expected_sha256` {SHA256}"):
        fetch(unpinned, tmp_path, unpinned.url, progress=False)
    assert (tmp_path / "a.tar.partial").stat().st_size == len(PAYLOAD)
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        fetch(unpinned, tmp_path, unpinned.url, expected_sha256="1" * 64, progress=False)
    path = fetch(unpinned, tmp_path, unpinned.url, expected_sha256=SHA256, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_the_kept_unverified_download_is_not_fetched_again(server, tmp_path):
    unpinned = Archive("a.tar", url=f"{server.url}/a.tar")
    with pytest.raises(ChecksumError):
        fetch(unpinned, tmp_path, unpinned.url, progress=False)
    fetch(unpinned, tmp_path, unpinned.url, expected_sha256=SHA256, progress=False)
    assert [r for _, r in server.requests] == [None, f"bytes={len(PAYLOAD)}-"]  # answered 416


def test_a_missing_file_on_the_server_is_one_clear_error(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(pinned(), tmp_path, f"{server.url}/nothing.tar", progress=False)


def tar_with(tmp_path, *entries):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        for info in entries:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def entry(name, kind=tarfile.REGTYPE, link="", size=1):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, size if kind == tarfile.REGTYPE else 0
    return info


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (entry("../escape.txt"), "contains '..'"),
        (entry("ok/../../escape.txt"), "contains '..'"),
        (entry("/tmp/escape.txt"), "absolute path"),
        (entry("link", tarfile.SYMTYPE, "../outside"), "'link' is a symbolic link"),
        (entry("deep/link", tarfile.SYMTYPE, "../../outside"), "'deep/link' is a symbolic link"),
        (entry("abs", tarfile.SYMTYPE, "/etc/passwd"), "'abs' is a symbolic link"),
        (entry("hard", tarfile.LNKTYPE, "../outside"), "'hard' is a hard link"),
        (entry("dev", tarfile.CHRTYPE), "'dev' is a device file"),
        (entry("block", tarfile.BLKTYPE), "'block' is a device file"),
        (entry("fifo", tarfile.FIFOTYPE), "'fifo' is a FIFO"),
    ],
)
def test_unsafe_entries_are_refused(tmp_path, bad, reason):
    archive = tar_with(tmp_path, entry("fine.txt"), bad)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=reason):
        safe_extract(archive, dest, progress=False)
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "outside").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "evil.tar"]


def test_an_entry_under_a_link_that_leads_outside_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "out").symlink_to(outside)  # already there, e.g. made by the user
    archive = tar_with(tmp_path, entry("out/x.txt"))
    with pytest.raises(UnsafeArchiveError, match="resolves outside"):
        safe_extract(archive, dest, progress=False)
    assert not list(outside.iterdir())


@pytest.mark.parametrize(
    "link",
    [
        entry("data/b.txt", tarfile.SYMTYPE, "a.txt"),
        entry("c.txt", tarfile.LNKTYPE, "data/a.txt"),
    ],
)
def test_links_are_refused_even_when_they_point_inside(tmp_path, link):
    archive = tar_with(tmp_path, entry("data/a.txt"), link)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=f"entry '{link.name}' is a .* link"):
        safe_extract(archive, dest, progress=False)
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "data",
        "data/a.txt",
    ]


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_a_link_through_a_link_to_the_folder_itself_creates_nothing_outside(tmp_path, kind):
    """`dot -> .` then `secret.JPEG -> dot/../outside/secret.JPEG`: as text the second link
    stays inside, but the kernel follows `dot` first and lands outside."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.JPEG").write_bytes(b"secret")
    archive = tar_with(
        tmp_path,
        entry("dot", tarfile.SYMTYPE, "."),
        entry("secret.JPEG", kind, "dot/../outside/secret.JPEG"),
    )
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchiveError, match=r"entry 'dot' is a symbolic link to '\.'"):
        safe_extract(archive, dest, progress=False)
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest", "evil.tar", "outside"]
    assert (outside / "secret.JPEG").stat().st_nlink == 1


def test_a_link_left_out_by_place_is_not_refused(tmp_path):
    archive = tar_with(tmp_path, entry("a.txt"), entry("b.txt", tarfile.SYMTYPE, "a.txt"))
    dest = tmp_path / "dest"
    written = safe_extract(archive, dest, {"a.txt": "a.txt"}.get, progress=False)
    assert written == [dest.resolve() / "a.txt"] and not (dest / "b.txt").is_symlink()


def test_extraction_is_safe_to_rerun_and_replaces_a_truncated_file(tmp_path):
    path = tmp_path / "ok.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add_bytes(tar, "top/a.bin", PAYLOAD[:5000])
        add_bytes(tar, "top/b.bin", PAYLOAD[5000:9000])
    dest = tmp_path / "dest"
    safe_extract(path, dest, progress=False)
    (dest / "top/b.bin").write_bytes(b"trunc")
    stamp = (dest / "top/a.bin").stat().st_mtime_ns
    written = safe_extract(path, dest, progress=False)
    assert written == [dest.resolve() / "top/a.bin", dest.resolve() / "top/b.bin"]
    assert (dest / "top/b.bin").read_bytes() == PAYLOAD[5000:9000]
    assert (dest / "top/a.bin").stat().st_mtime_ns == stamp
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "top/a.bin",
        "top/b.bin",
    ]  # no temporary file left


def test_place_renames_and_skips_entries(tmp_path):
    path = tmp_path / "ok.tar"
    with tarfile.open(path, "w") as tar:
        add_bytes(tar, "val/one.xml", b"1")
        add_bytes(tar, "val/readme.txt", b"2")
    dest = tmp_path / "dest"
    place = {"val/one.xml": "boxes/one.xml"}.get
    assert safe_extract(path, dest, place, progress=False) == [dest.resolve() / "boxes/one.xml"]
    assert sorted(p.name for p in dest.rglob("*") if p.is_file()) == ["one.xml"]


def test_the_first_mib_md5_is_checked_across_a_resumed_download(tmp_path):
    payload = np.random.default_rng(1).integers(0, 256, 1_500_000, dtype=np.uint8).tobytes()
    head = hashlib.md5(payload[: archives.HEAD_BYTES]).hexdigest()
    archive = Archive("b.tgz", len(payload), head_md5=head)
    with ArchiveServer({"b.tgz": payload}) as running:
        running.cut["b.tgz"] = 700_001  # the first MiB arrives in two runs, split mid-chunk
        url = f"{running.url}/b.tgz"
        with pytest.raises(DownloadError):
            fetch(archive, tmp_path, url, retries=0, progress=False)
        assert fetch(archive, tmp_path, url, retries=0, progress=False).read_bytes() == payload
        wrong = Archive("b.tgz", len(payload), head_md5=hashlib.md5(payload).hexdigest())
        with pytest.raises(ChecksumError, match=f"expected md5 of the first MiB .*, got {head}"):
            fetch(wrong, tmp_path / "again", url, progress=False)


def test_a_sha256_that_contradicts_the_pinned_one_is_refused_before_hashing(tmp_path, monkeypatch):
    given = tmp_path / "a.tar"
    given.write_bytes(PAYLOAD)
    monkeypatch.setattr(archives, "file_digests", lambda *a, **k: pytest.fail("hashed the file"))
    with pytest.raises(ConfigError, match="differs from the pinned sha256"):
        fetch(pinned(sha256=SHA256), tmp_path / "d", given=given, expected_sha256="2" * 64)


def test_a_sha256_that_contradicts_the_pinned_one_is_refused_before_downloading(server, tmp_path):
    url = f"{server.url}/a.tar"
    with pytest.raises(ConfigError, match="differs from the pinned sha256"):
        fetch(pinned(sha256=SHA256), tmp_path, url, expected_sha256="2" * 64, progress=False)
    assert server.requests == [] and list(tmp_path.iterdir()) == []
    path = fetch(
        pinned(sha256=SHA256), tmp_path, url, expected_sha256=SHA256.upper(), progress=False
    )
    assert path.read_bytes() == PAYLOAD


@pytest.mark.parametrize("key", sorted(k for k, a in archives.ARCHIVES.items() if a.url))
def test_every_public_archive_pins_its_size_and_a_published_digest(key):
    archive = archives.ARCHIVES[key]
    lengths = {"md5": 32, "head_md5": 32, "sha256": 64}
    assert archive.size and set(archive.expected()) & {"sha256", "head_md5"}
    assert archive.url.endswith("/" + archive.filename)
    for kind, digest in archive.expected().items():
        assert len(digest) == lengths[kind] and int(digest, 16) >= 0 and digest == digest.lower()


def test_a_file_verified_before_a_pin_was_added_is_checked_against_it(tmp_path, monkeypatch):
    given = tmp_path / "a.tar"
    given.write_bytes(PAYLOAD)
    fetch(pinned(), tmp_path / "d", given=given, progress=False)
    hashed = []
    monkeypatch.setattr(archives, "file_digests", lambda *a, **k: hashed.append(1) or {})
    fetch(pinned(), tmp_path / "d", given=given, progress=False)  # unchanged: not hashed again
    assert hashed == []
    monkeypatch.undo()
    with pytest.raises(ChecksumError, match=r"expected sha256 2{64}"):
        fetch(pinned(sha256="2" * 64), tmp_path / "d", given=given, progress=False)


class TrickleServer:
    """Serves `payload` as a whole-file response that trickles: `step` bytes, then a pause of
    `pause` seconds, for at most `steps` steps; then the connection is dropped."""

    def __init__(self, payload: bytes, step: int = 16, pause: float = 0.01, steps: int = 200):
        stop = self.stop = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                for start in range(0, min(len(payload), step * steps), step):
                    if stop.wait(pause):  # the trickle's pace; set when the test is done
                        return
                    self.wfile.write(payload[start : start + step])
                    self.wfile.flush()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def test_a_trickling_server_is_given_up_and_the_next_run_resumes(tmp_path):
    stall = archives.Stall(timeout=10.0, min_rate=1024.0, window=0.2)  # at most 400 bytes/s come
    url = None
    with TrickleServer(PAYLOAD, step=4) as server, pytest.raises(DownloadError) as raised:
        url = f"{server.url}/a.tar"
        fetch(pinned(), tmp_path, url, retries=0, progress=False, stall=stall)
    message = str(raised.value)
    assert f"could not download {url}" in message and "below the minimum 1,024 bytes/s" in message
    assert "run the same command again to resume" in message
    assert 0 < (tmp_path / "a.tar.partial").stat().st_size < len(PAYLOAD)  # kept for the re-run


def test_a_server_that_sends_nothing_times_out(tmp_path):
    stall = archives.Stall(timeout=0.2, min_rate=1.0, window=60.0)
    with TrickleServer(PAYLOAD, pause=30.0) as server, pytest.raises(DownloadError) as raised:
        fetch(pinned(), tmp_path, f"{server.url}/a.tar", retries=0, progress=False, stall=stall)
    assert "timed out" in str(raised.value) and "run the same command again" in str(raised.value)
