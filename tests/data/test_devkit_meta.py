"""A devkit meta.mat that is not the ILSVRC2012 devkit's (empty, MATLAB v7.3, a synsets field that is
not the struct) is one DataError naming the file and what was expected, at the terminal one line."""

import hashlib
import io
import tarfile

import h5py
import numpy as np
import pytest
import scipy.io
from synthetic_imagenet import add_bytes, val_tar

from xaibench.cli import main
from xaibench.core.errors import DataError
from xaibench.data.archives import ARCHIVES, Archive
from xaibench.data.imagenet import read_devkit

EXPECTED = (
    "expected the ILSVRC2012 devkit's meta.mat (MATLAB v5, a synsets struct array with fields "
    "ILSVRC2012_ID, WNID, words, num_children); pass the original ILSVRC2012_devkit_t12.tar.gz"
)
V73_HEADER = (
    b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(124) + b"\x00\x02IM"
)


def mat_bytes(variables: dict) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables)
    return buffer.getvalue()


def v73_bytes(tmp_path) -> bytes:
    """A MATLAB v7.3 file: a 512-byte MATLAB header, then HDF5."""
    path = tmp_path / "v73.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["synsets"] = np.arange(3.0)
    data = bytearray(path.read_bytes())
    data[: len(V73_HEADER)] = V73_HEADER
    return bytes(data)


BAD = {
    "empty": (lambda tmp: b"", "{meta} is empty; "),
    "v7.3": (v73_bytes, "{meta} is a MATLAB v7.3 (HDF5) file; "),
    "numeric synsets": (
        lambda tmp: mat_bytes({"synsets": np.arange(5.0)}),
        "{meta}: synsets is a float64 array without ILSVRC2012_ID, WNID, words, num_children; ",
    ),
    "no synsets": (lambda tmp: mat_bytes({"other": 1.0}), "{meta} has no synsets variable; "),
    "not a mat file": (lambda tmp: b"hello" * 100, "cannot read {meta} ("),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_meta_mat_that_is_not_the_devkit_s_is_named_with_what_was_expected(tmp_path, kind):
    make, start = BAD[kind]
    meta = tmp_path / "meta.mat"
    meta.write_bytes(make(tmp_path))
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n")
    with pytest.raises(DataError) as refused:
        read_devkit(tmp_path)
    message = str(refused.value)
    assert message.startswith(start.format(meta=meta)) and message.endswith(EXPECTED)


def pin(monkeypatch, key, path):
    data = path.read_bytes()
    monkeypatch.setitem(ARCHIVES, key, Archive(path.name, len(data), hashlib.md5(data).hexdigest()))


@pytest.mark.parametrize("kind", ["empty", "v7.3", "numeric synsets"])
def test_download_with_such_a_devkit_prints_one_error_line(tmp_path, monkeypatch, capsys, kind):
    sources = tmp_path / "sources"
    sources.mkdir()
    devkit = sources / "ILSVRC2012_devkit_t12.tar.gz"
    with tarfile.open(devkit, "w:gz") as tar:
        add_bytes(tar, "ILSVRC2012_devkit_t12/data/meta.mat", BAD[kind][0](tmp_path))
        add_bytes(tar, "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt", b"1\n")
    images = val_tar(sources / "ILSVRC2012_img_val.tar", 1)
    pin(monkeypatch, "imagenet-devkit", devkit)
    pin(monkeypatch, "imagenet-val", images)
    dest = tmp_path / "imagenet"
    args = ["download", "imagenet-val", "--dest", dest, "--archive", devkit, "--archive", images]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in [*args, "--quiet"]])
    lines = capsys.readouterr().err.splitlines()
    meta = dest / "devkit" / "meta.mat"
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("error: " + BAD[kind][1].format(meta=meta))
    assert lines[0].endswith(EXPECTED)
