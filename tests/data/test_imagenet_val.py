"""ImageNet val from synthetic archives with the real layout: devkit rule, arrangement, resume."""

import hashlib
import os
import sys

import numpy as np
import pytest
from synthetic_imagenet import (
    KIT_FOX,
    ArchiveServer,
    boxes_tar,
    devkit_tar,
    devkit_wnids,
    val_tar,
)

from xaibench.cli import main
from xaibench.core.errors import ConfigError, DataError
from xaibench.data import archives, extract, imagenet
from xaibench.data.archives import ARCHIVES, Archive
from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import ImageFolderDataset
from xaibench.data.imagenet import prepare_imagenet_val, read_devkit
from xaibench.data.index import read_index
from xaibench.data.preprocess import Preprocess

IMAGES = 12
# devkit IDs of the 12 images: ID 1 (n02119789, index 278) first, some classes twice
GROUND_TRUTH = [1, 2, 3, 1, 500, 1000, 2, 7, 7, 7, 999, 42]


def pin(monkeypatch, key, path):
    data = path.read_bytes()
    archive = Archive(path.name, len(data), hashlib.md5(data).hexdigest())
    monkeypatch.setitem(ARCHIVES, key, archive)


@pytest.fixture()
def sources(tmp_path, monkeypatch):
    """The three archives under their real names, pinned in the table by their size and md5."""
    folder = tmp_path / "sources"
    folder.mkdir()
    wnids = devkit_wnids()
    paths = {
        "imagenet-val": val_tar(folder / "ILSVRC2012_img_val.tar", IMAGES),
        "imagenet-devkit": devkit_tar(folder / "ILSVRC2012_devkit_t12.tar.gz", GROUND_TRUTH),
        "imagenet-val-boxes": boxes_tar(
            folder / "ILSVRC2012_bbox_val_v3.tgz", [wnids[i - 1] for i in GROUND_TRUTH]
        ),
    }
    for key, path in paths.items():
        pin(monkeypatch, key, path)
    return paths


def expected_wnids():
    wnids = devkit_wnids()
    return [wnids[i - 1] for i in GROUND_TRUTH]


def test_devkit_id_1_is_the_kit_fox_at_index_278(tmp_path):
    from xaibench.data.extract import safe_extract

    devkit_tar(tmp_path / "devkit.tar.gz", GROUND_TRUTH)
    safe_extract(tmp_path / "devkit.tar.gz", tmp_path, imagenet._devkit_place, progress=False)
    devkit = read_devkit(tmp_path / "devkit")
    classes = imagenet_classes()
    assert len(devkit.wnid_of_id) == 1000  # the two inner nodes are not classes
    assert devkit.wnid_of_id[1] == KIT_FOX and classes.index_of(KIT_FOX) == 278
    assert devkit.image_wnids() == expected_wnids()
    assert devkit.names[KIT_FOX] == classes.names(278)
    # the index is the position among sorted WNIDs, not devkit ID - 1
    assert [classes.index_of(w) for w in devkit.image_wnids()][:1] == [278]


def test_a_devkit_with_other_classes_is_refused(tmp_path):
    from xaibench.data.extract import safe_extract

    wnids = devkit_wnids()
    wnids[5] = "n00002137"
    devkit_tar(tmp_path / "devkit.tar.gz", GROUND_TRUTH, wnids)
    safe_extract(tmp_path / "devkit.tar.gz", tmp_path, imagenet._devkit_place, progress=False)
    with pytest.raises(DataError, match="not the 1000 ImageNet-1k WNIDs"):
        read_devkit(tmp_path / "devkit")


def test_arranges_into_wnid_folders_with_index_files_and_boxes(sources, tmp_path):
    dest = tmp_path / "imagenet"
    given = dict(sources)
    index = prepare_imagenet_val(dest, given=given, progress=False)
    classes = imagenet_classes()
    wnids = expected_wnids()
    for number, wnid in enumerate(wnids, 1):
        assert (dest / "val" / wnid / f"ILSVRC2012_val_{number:08d}.JPEG").is_file()
    assert not list((dest / "val").glob("*.JPEG"))
    lines = (dest / "labels.txt").read_text().splitlines()
    assert f"{KIT_FOX}/ILSVRC2012_val_00000001.JPEG 278 {KIT_FOX}" in lines
    assert len(lines) == IMAGES
    assert (dest / "image_list.txt").read_text().split() == [line.split()[0] for line in lines]
    table = (dest / "classes.tsv").read_text().splitlines()
    assert table[0] == "index\twnid\tnames" and table[279].startswith(f"278\t{KIT_FOX}\tkit fox")
    dataset = ImageFolderDataset(dest / "val", Preprocess(resize=(8, 8)), dest / "labels.txt")
    by_number = dict(zip(dataset.ids, dataset.labels.tolist(), strict=True))
    for number, wnid in enumerate(wnids, 1):
        assert by_number[f"{wnid}/ILSVRC2012_val_{number:08d}.JPEG"] == classes.index_of(wnid)
    assert read_index(dest).root == dest / "val" and index.ids == sorted(by_number)
    assert index.labels.tolist() == [by_number[i] for i in index.ids]
    boxes = sorted(p.name for p in (dest / "boxes").glob("*.xml"))
    assert boxes == [f"ILSVRC2012_val_{n:08d}.xml" for n in range(1, IMAGES + 1)]
    assert (dest / "boxes" / ".extracted").is_file()
    assert f"<name>{wnids[4]}</name>" in (dest / "boxes/ILSVRC2012_val_00000005.xml").read_text()
    # the user's archives are used in place, untouched
    assert not (dest / "ILSVRC2012_img_val.tar").exists()
    assert all(p.is_file() for p in sources.values())


def test_a_ground_truth_that_does_not_fit_the_images_is_an_error(sources, tmp_path, monkeypatch):
    short = devkit_tar(tmp_path / "sources" / "ILSVRC2012_devkit_t12.tar.gz", GROUND_TRUTH[:-1])
    pin(monkeypatch, "imagenet-devkit", short)
    dest = tmp_path / "imagenet"
    given = {"imagenet-val": sources["imagenet-val"], "imagenet-devkit": short}
    with pytest.raises(DataError, match=r"ground truth has 11 lines but .* holds 12"):
        prepare_imagenet_val(dest, given=given, progress=False)
    assert len(list((dest / "val").glob("*.JPEG"))) == IMAGES  # nothing moved
    assert not (dest / "val" / ".arranged").exists()


def test_a_killed_arrangement_is_completed_by_the_next_run(sources, tmp_path, monkeypatch):
    given = {k: sources[k] for k in ("imagenet-val", "imagenet-devkit")}
    prepare_imagenet_val(tmp_path / "whole", given=given, progress=False)

    real_replace, moves = os.replace, []

    def replace_then_die(src, dst):
        if os.path.basename(os.path.dirname(dst)).startswith("n0"):
            moves.append(dst)
            if len(moves) > 5:
                raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(imagenet.os, "replace", replace_then_die)
    dest = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        prepare_imagenet_val(dest, given=given, progress=False)
    monkeypatch.setattr(imagenet.os, "replace", real_replace)
    assert len(list((dest / "val").glob("*.JPEG"))) == IMAGES - 5
    assert not (dest / "val" / ".arranged").exists() and not (dest / "labels.txt").exists()

    prepare_imagenet_val(dest, given=given, progress=False)

    def files(root):
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    assert files(dest / "val") == files(tmp_path / "whole" / "val")
    assert (dest / "labels.txt").read_text() == (tmp_path / "whole" / "labels.txt").read_text()


def test_a_killed_box_extraction_is_completed_by_the_next_run(sources, tmp_path, monkeypatch):
    real_write, boxes_written = extract.write_stream_atomic, []

    def write_then_die(path, stream):
        if path.parent.name == "boxes":
            boxes_written.append(path)
            if len(boxes_written) > 5:
                raise KeyboardInterrupt
        return real_write(path, stream)

    monkeypatch.setattr(extract, "write_stream_atomic", write_then_die)
    dest = tmp_path / "imagenet"
    with pytest.raises(KeyboardInterrupt):
        prepare_imagenet_val(dest, given=dict(sources), progress=False)
    assert len(list((dest / "boxes").iterdir())) == 5  # five boxes, no marker, no index
    assert not (dest / "boxes" / ".extracted").exists() and not (dest / "labels.txt").exists()
    assert (dest / "val" / ".arranged").exists()  # the images were done before the boxes

    monkeypatch.setattr(extract, "write_stream_atomic", real_write)
    prepare_imagenet_val(dest, given=dict(sources), progress=False)
    boxes = sorted(p.name for p in (dest / "boxes").glob("*.xml"))
    assert boxes == [f"ILSVRC2012_val_{n:08d}.xml" for n in range(1, IMAGES + 1)]
    assert (dest / "boxes" / ".extracted").is_file() and (dest / "labels.txt").is_file()
    wnids = expected_wnids()
    assert f"<name>{wnids[11]}</name>" in (dest / "boxes/ILSVRC2012_val_00000012.xml").read_text()

    extracted = []
    monkeypatch.setattr(extract, "safe_extract", lambda archive, *a, **k: extracted.append(archive))
    prepare_imagenet_val(dest, given=dict(sources), progress=False)
    assert extracted == []  # images, devkit and boxes marked done: no archive is read again
    assert (dest / "devkit" / ".extracted").is_file()


def test_downloads_from_the_url_base_of_the_environment(sources, tmp_path, monkeypatch, invoke):
    monkeypatch.setattr(archives.time, "sleep", lambda seconds: None)  # the retry's backoff
    files = {p.name: p.read_bytes() for p in sources.values()}
    with ArchiveServer(files) as server:
        server.cut["ILSVRC2012_img_val.tar"] = 5000
        result = invoke(
            "download",
            "imagenet-val",
            "--dest",
            tmp_path / "d",
            "--boxes",
            "--quiet",
            env={"XAIBENCH_IMAGENET_URL": server.url},
        )
    assert result.exit_code == 0, result.output
    assert ("ILSVRC2012_img_val.tar", "bytes=5000-") in server.requests  # cut, then resumed
    assert "imagenet-val: 12 images in 8 classes" in result.output
    assert f"--data {tmp_path / 'd' / 'val'} --labels {tmp_path / 'd' / 'labels.txt'}" in (
        result.output
    )
    assert (tmp_path / "d" / "ILSVRC2012_img_val.tar").read_bytes() == files[
        "ILSVRC2012_img_val.tar"
    ]
    assert len(list((tmp_path / "d" / "boxes").glob("*.xml"))) == IMAGES


def test_without_a_source_the_command_says_so_plainly(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("XAIBENCH_IMAGENET_URL", raising=False)
    monkeypatch.setattr(
        sys, "argv", ["xaibench", "download", "imagenet-val", "--dest", str(tmp_path)]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.count("\n") == 0
    assert (
        "ImageNet needs an account" in err and "pass each with --archive, or give --url-base" in err
    )
    assert "ILSVRC2012_img_val.tar" in err and "XAIBENCH_IMAGENET_URL" in err


def test_without_a_source_cli_runner_gets_the_same_error(tmp_path, invoke):
    result = invoke(
        "download",
        "imagenet-val",
        "--dest",
        tmp_path,
        env={"XAIBENCH_IMAGENET_URL": ""},
        catch_exceptions=True,
    )
    assert isinstance(result.exception, ConfigError)
    assert "ImageNet needs an account at image-net.org" in str(result.exception)
    assert not list(tmp_path.iterdir())  # nothing written


def test_options_that_do_not_apply_are_refused(tmp_path, invoke):
    result = invoke(
        "download", "imagenette-160", "--dest", tmp_path, "--boxes", catch_exceptions=True
    )
    assert (
        result.exit_code == 2 and "--boxes" in result.output and "imagenette-160" in result.output
    )


def test_an_archive_with_another_name_is_refused(sources, tmp_path, invoke):
    other = tmp_path / "val.tar"
    other.write_bytes(sources["imagenet-val"].read_bytes())
    result = invoke(
        "download",
        "imagenet-val",
        "--dest",
        tmp_path / "d",
        "--archive",
        other,
        catch_exceptions=True,
    )
    assert result.exit_code != 0 and "expected one of ILSVRC2012_img_val.tar" in str(
        result.exception
    )


def test_subset_file_feeds_generate(sources, tmp_path, invoke):
    dest = tmp_path / "d"
    args = ["download", "imagenet-val", "--dest", str(dest), "--quiet", "--subset", "4"]
    for key in ("imagenet-val", "imagenet-devkit"):
        args += ["--archive", str(sources[key])]
    result = invoke(*args, "--seed", "3")
    assert result.exit_code == 0, result.output
    subset = dest / "subset-4-seed3.txt"
    assert f"use --subset {subset}" in result.output
    chosen = [line.split()[0] for line in subset.read_text().splitlines()]
    assert len(chosen) == 4
    result = invoke(
        "generate",
        "--model",
        "tiny_models:tiny_cnn",
        "--saliency",
        "random",
        "--data",
        dest / "val",
        "--subset",
        subset,
        "--out",
        tmp_path / "runs",
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    from xaibench.store import open_store

    with open_store(tmp_path / "runs" / "tiny_models_tiny_cnn" / "random.h5") as store:
        assert store.ids == chosen and store.complete
        labels = np.array([int(line.split()[1]) for line in subset.read_text().splitlines()])
        assert store.labels.tolist() == labels.tolist()


def test_verify_reads_the_arranged_folder_through_its_index(sources, tmp_path, invoke):
    given = {k: sources[k] for k in ("imagenet-val", "imagenet-devkit")}
    dest = tmp_path / "imagenet"
    prepare_imagenet_val(dest, given=given, progress=False)
    result = invoke("verify", dest, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"{dest / 'val'}: 12 labelled images in 8 classes (1 to 3 per class)" in result.output
    (dest / "val" / KIT_FOX / "ILSVRC2012_val_00000004.JPEG").unlink()
    result = invoke("verify", dest, "--quiet")
    assert result.exit_code == 1 and "missing images (listed in the index): 1" in result.output
    assert f"  {KIT_FOX}/ILSVRC2012_val_00000004.JPEG" in result.output
