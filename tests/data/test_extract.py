"""A run killed while a file is written leaves nothing under the final name; the next completes it."""

import shutil
import tarfile
from importlib import resources
from pathlib import Path

import pytest
from synthetic_imagenet import add_bytes

from xaibench.core import atomic
from xaibench.data.extract import safe_extract
from xaibench.data.samples import SAMPLES, build_sample_dataset

BIG = bytes(range(256)) * 1024  # 256 KiB


def files_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def kill_copy_number(monkeypatch, number):
    """Kill the `number`-th atomic stream copy (1-based) after it wrote 1 KiB; returns the
    names of the files copied so far."""
    real_copy = shutil.copyfileobj
    copied = []

    def copy(source, out, length=0):
        copied.append(out.name)
        if len(copied) == number:
            out.write(source.read(1024))
            raise KeyboardInterrupt
        real_copy(source, out, length)

    monkeypatch.setattr(atomic.shutil, "copyfileobj", copy)
    return copied


def test_a_member_killed_half_written_is_not_left_under_its_name(tmp_path, monkeypatch):
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        add_bytes(tar, "top/small.bin", b"small")
        add_bytes(tar, "top/big.bin", BIG)
    dest = tmp_path / "dest"
    copied = kill_copy_number(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        safe_extract(archive, dest, progress=False)
    assert len(copied) == 2
    assert files_under(dest) == ["top/small.bin"]  # big.bin: neither it nor its temporary file
    monkeypatch.undo()
    written = safe_extract(archive, dest, progress=False)
    assert files_under(dest) == ["top/big.bin", "top/small.bin"] and len(written) == 2
    assert (dest / "top/big.bin").read_bytes() == BIG


def test_a_sample_killed_half_copied_is_rebuilt_by_the_next_run(tmp_path, monkeypatch):
    copied = kill_copy_number(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        build_sample_dataset(tmp_path)
    assert len(copied) == 3 and len(files_under(tmp_path)) == 2
    monkeypatch.undo()
    build_sample_dataset(tmp_path)
    source = Path(str(resources.files("skimage.data")))
    assert len(files_under(tmp_path)) == len(SAMPLES)
    for name, wnid, _ in SAMPLES:
        assert (tmp_path / wnid / name).read_bytes() == (source / name).read_bytes()
