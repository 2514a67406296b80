"""Public subsets from a local server (labels mapped to the 1000 classes) and layouts on disk."""

import hashlib
import tarfile

import pytest
from synthetic_imagenet import ArchiveServer, add_bytes, jpeg_bytes

from xaibench.core.errors import DataError
from xaibench.data.archives import ARCHIVES, Archive, ChecksumError
from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import ImageFolderDataset
from xaibench.data.index import read_index
from xaibench.data.local import index_local
from xaibench.data.preprocess import Preprocess
from xaibench.data.public import prepare_public

TENCH, HORN = "n01440764", "n03394916"


def tgz(path, names):
    with tarfile.open(path, "w:gz") as tar:
        for k, name in enumerate(names):
            add_bytes(tar, name, jpeg_bytes(k))
    return path.read_bytes()


def serve_as(monkeypatch, key, url, **pins):
    archive = ARCHIVES[key]
    monkeypatch.setitem(ARCHIVES, key, Archive(archive.filename, url=url, **pins))


def test_imagenetv2_folders_are_read_as_integers(tmp_path, monkeypatch):
    top = "imagenetv2-matched-frequency-format-val"
    folders = ["0", "1", "10", "100", "2"]  # as strings sorted, "10" comes third
    data = tgz(tmp_path / "v2.tar.gz", [f"{top}/{f}/{k}.jpeg" for k, f in enumerate(folders)])
    with ArchiveServer({"imagenetv2-matched-frequency.tar.gz": data}) as server:
        serve_as(
            monkeypatch,
            "imagenetv2-matched-frequency",
            f"{server.url}/imagenetv2-matched-frequency.tar.gz",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        index = prepare_public("imagenetv2-matched-frequency", tmp_path / "v2", progress=False)
    by_id = dict(zip(index.ids, index.labels.tolist(), strict=True))
    assert by_id == {f"{f}/{k}.jpeg": int(f) for k, f in enumerate(folders)}
    assert by_id["10/2.jpeg"] == 10
    classes = imagenet_classes()
    assert f"10/2.jpeg 10 {classes.wnid(10)}" in (tmp_path / "v2/labels.txt").read_text()
    dataset = ImageFolderDataset(index.root, Preprocess(resize=(8, 8)), index.labels_file)
    assert dict(zip(dataset.ids, dataset.labels.tolist(), strict=True)) == by_id
    assert read_index(tmp_path / "v2").expected_per_class == 10


def test_imagenette_val_is_indexed_by_its_wnid_folders(tmp_path, monkeypatch):
    names = [
        f"imagenette2-160/train/{TENCH}/a.JPEG",
        f"imagenette2-160/val/{TENCH}/b.JPEG",
        f"imagenette2-160/val/{HORN}/c.JPEG",
    ]
    data = tgz(tmp_path / "nette.tgz", names)
    with ArchiveServer({"imagenette2-160.tgz": data}) as server:
        pins = {"md5": hashlib.md5(data).hexdigest()}
        serve_as(monkeypatch, "imagenette2-160", "https://unused.invalid/x.tgz", **pins)
        # --url-base replaces the pinned URL's folder (a mirror)
        index = prepare_public("imagenette-160", tmp_path / "n", server.url, progress=False)
        again = prepare_public("imagenette-160", tmp_path / "n", server.url, progress=False)
        assert len(server.requests) == 1
    assert index.ids == again.ids == [f"{TENCH}/b.JPEG", f"{HORN}/c.JPEG"]
    assert index.labels.tolist() == [0, 566]
    assert index.root == tmp_path / "n" / "imagenette2-160" / "val"


def test_imagewoof_is_checked_by_size_and_first_mib_md5_and_takes_a_users_sha256(
    tmp_path, monkeypatch, invoke
):
    pins = ARCHIVES["imagewoof2-160"]
    assert pins.size and pins.head_md5 and pins.sha256 is None
    data = tgz(tmp_path / "woof.tgz", [f"imagewoof2-160/val/{HORN}/c.JPEG"])
    sha256 = hashlib.sha256(data).hexdigest()
    with ArchiveServer({"imagewoof2-160.tgz": data}) as server:
        head = {"size": len(data), "head_md5": hashlib.md5(data[: 1 << 20]).hexdigest()}
        serve_as(monkeypatch, "imagewoof2-160", f"{server.url}/imagewoof2-160.tgz", **head)
        args = ["download", "imagewoof-160", "--dest", str(tmp_path / "w"), "--quiet"]
        wrong = invoke(*args, "--sha256", "0" * 64, catch_exceptions=True)
        assert isinstance(wrong.exception, ChecksumError)
        assert f"expected sha256 {'0' * 64}, got {sha256}" in str(wrong.exception)
        done = invoke(*args, "--sha256", sha256)
        assert done.exit_code == 0, done.output
        again = invoke(*args)  # verified before
    assert "imagewoof-160: 1 images in 1 classes" in done.output
    assert again.exit_code == 0, again.output
    assert len(server.requests) == 2  # the bad download was removed and fetched afresh, once


def photo_folder(root, layout):
    """Three images of two classes in torchvision's val/ layout or flat."""
    files = [(TENCH, "ILSVRC2012_val_00000001.JPEG"), (HORN, "ILSVRC2012_val_00000002.JPEG")]
    files.append((TENCH, "ILSVRC2012_val_00000003.JPEG"))
    for k, (wnid, name) in enumerate(files):
        path = root / (f"val/{wnid}/{name}" if layout == "folders" else name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg_bytes(k))
    return files


def assert_indexed_in_place(dest, root, expected, labels_file=None):
    index = read_index(dest)
    assert index.root == root.resolve()
    assert dict(zip(index.ids, index.labels.tolist(), strict=True)) == expected
    dataset = ImageFolderDataset(root, Preprocess(resize=(8, 8)), dest / "labels.txt")
    assert dict(zip(dataset.ids, dataset.labels.tolist(), strict=True)) == expected
    assert not list(dest.rglob("*.JPEG"))  # nothing copied


def test_torchvision_val_folders_are_indexed_in_place(tmp_path):
    files = photo_folder(tmp_path / "imagenet", "folders")
    layout, _ = index_local(tmp_path / "imagenet", tmp_path / "dest")
    assert layout == "WNID class folders"
    classes = imagenet_classes()
    expected = {f"{w}/{n}": classes.index_of(w) for w, n in files}
    assert_indexed_in_place(tmp_path / "dest", tmp_path / "imagenet" / "val", expected)


def test_kaggle_solution_csv_is_indexed_in_place(tmp_path, invoke):
    source = tmp_path / "kaggle"
    files = photo_folder(source / "ILSVRC/Data/CLS-LOC/val", "flat")
    rows = [f"{n.removesuffix('.JPEG')},{w} 1 2 30 40 {w} 5 6 70 80" for w, n in files]
    (source / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows))
    result = invoke("download", "local", "--source", source, "--dest", tmp_path / "dest")
    assert result.exit_code == 0, result.output
    assert "recognised Kaggle LOC_val_solution.csv" in result.output
    classes = imagenet_classes()
    expected = {n: classes.index_of(w) for w, n in files}
    assert_indexed_in_place(tmp_path / "dest", source / "ILSVRC/Data/CLS-LOC/val", expected)


def test_an_unknown_wnid_in_the_kaggle_csv_names_the_file_and_line(tmp_path):
    source = tmp_path / "kaggle"
    files = photo_folder(source / "ILSVRC/Data/CLS-LOC/val", "flat")
    rows = [f"{files[0][1].removesuffix('.JPEG')},{files[0][0]} 1 2 3 4", "img2,n99999999 1 2 3 4"]
    (source / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows))
    with pytest.raises(DataError, match=r"LOC_val_solution\.csv, line 3: .*n99999999"):
        index_local(source, tmp_path / "dest")


def test_a_flat_folder_with_a_labels_file_is_indexed_in_place(tmp_path):
    files = photo_folder(tmp_path / "flat", "flat")
    labels = tmp_path / "val.txt"
    labels.write_text("".join(f"{n} 065 {w}\n" for w, n in files))
    layout, _ = index_local(tmp_path / "flat", tmp_path / "dest", labels)
    assert layout == "folder + labels file"
    classes = imagenet_classes()
    expected = {n: classes.index_of(w) for w, n in files}
    assert_indexed_in_place(tmp_path / "dest", tmp_path / "flat", expected)


def test_an_unknown_layout_says_which_ones_are_recognised(tmp_path):
    photo_folder(tmp_path / "flat", "flat")
    with pytest.raises(DataError, match=r"WNID .* Kaggle's LOC_val_solution\.csv .* \(`labels`\)"):
        index_local(tmp_path / "flat", tmp_path / "dest")


@pytest.mark.parametrize("layout", ["labels file", "kaggle"])
def test_labels_naming_images_that_are_not_there_name_the_file_count_first_and_fix(
    tmp_path, layout
):
    images = tmp_path / "src" / "ILSVRC/Data/CLS-LOC/val"
    files = photo_folder(images, "flat")
    names = [n for _, n in files] + ["ILSVRC2012_val_00000009.JPEG", "ILSVRC2012_val_00000008.JPEG"]
    if layout == "kaggle":
        labels = tmp_path / "src" / "LOC_val_solution.csv"
        rows = [f"{n.removesuffix('.JPEG')},{TENCH} 1 2 3 4" for n in names]
        labels.write_text("ImageId,PredictionString\n" + "\n".join(rows))
        args = (tmp_path / "src", tmp_path / "dest")
    else:
        labels = tmp_path / "val.txt"
        labels.write_text("".join(f"{n} {TENCH}\n" for n in names))
        args = (images, tmp_path / "dest", labels)
    expected = (
        rf"labels file {labels} names 2 image\(s\) not under {images} "
        r"\(first: ILSVRC2012_val_00000008\.JPEG\); pass the folder that holds them"
    )
    with pytest.raises(DataError, match=expected):
        index_local(*args)
    assert not (tmp_path / "dest").exists()  # nothing indexed
