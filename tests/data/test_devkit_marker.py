"""A devkit refused after extraction does not stick: the right one, passed next, is extracted and
read afresh, and the marker names the archive it came from."""

import hashlib
import json

import pytest
from synthetic_imagenet import devkit_tar, devkit_wnids, val_tar

from xaibench.core.errors import DataError
from xaibench.data.archives import ARCHIVES, Archive
from xaibench.data.imagenet import prepare_imagenet_val

GROUND_TRUTH = [1, 2, 3, 1, 500, 1000]


def pin(monkeypatch, key, path):
    data = path.read_bytes()
    monkeypatch.setitem(ARCHIVES, key, Archive(path.name, len(data), hashlib.md5(data).hexdigest()))


def test_the_right_devkit_after_a_refused_one_is_extracted_afresh(tmp_path, monkeypatch):
    images = val_tar(tmp_path / "ILSVRC2012_img_val.tar", len(GROUND_TRUTH))
    pin(monkeypatch, "imagenet-val", images)
    wrong, right = tmp_path / "wrong", tmp_path / "right"
    wrong.mkdir(), right.mkdir()
    wnids = devkit_wnids()
    wnids[5] = "n00002137"  # not an ImageNet-1k class
    refused = devkit_tar(wrong / "ILSVRC2012_devkit_t12.tar.gz", GROUND_TRUTH, wnids)
    good = devkit_tar(right / "ILSVRC2012_devkit_t12.tar.gz", GROUND_TRUTH)
    dest = tmp_path / "imagenet"

    pin(monkeypatch, "imagenet-devkit", refused)
    given = {"imagenet-val": images, "imagenet-devkit": refused}
    with pytest.raises(DataError, match="not the 1000 ImageNet-1k WNIDs"):
        prepare_imagenet_val(dest, given=given, progress=False)
    assert not (dest / "devkit" / ".extracted").exists()

    pin(monkeypatch, "imagenet-devkit", good)
    given = {"imagenet-val": images, "imagenet-devkit": good}
    index = prepare_imagenet_val(dest, given=given, progress=False)
    assert len(index.ids) == len(GROUND_TRUTH)
    record = json.loads((dest / "devkit" / ".extracted").read_text())
    data = good.read_bytes()
    assert record == {
        "archive": good.name,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
