"""Image folders with links and special files, duplicate labels, and image ids that leave the root."""

import logging
import os
import re
import threading

import numpy as np
import pytest
from PIL import Image

from xaibench.core.errors import DataError
from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import (
    ImageFolderDataset,
    find_images,
    image_id_problem,
    load_rgb,
    read_labels_file,
    safe_image_path,
)
from xaibench.data.index import read_index
from xaibench.data.local import index_local
from xaibench.data.preprocess import Preprocess

RAW = Preprocess("test", (8, 8), None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
CAT, FOX = "n02124075", "n02119789"


def png(path, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6, 3), value, np.uint8)).save(path)
    return path


@pytest.fixture
def two_cats(tmp_path):
    root = tmp_path / "val"
    png(root / CAT / "a.png", 10)
    png(root / CAT / "b.png", 20)
    return root


def test_a_link_loop_adds_no_image(two_cats, invoke, tmp_path, caplog):
    (two_cats / CAT / "loop").symlink_to(".")
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(two_cats, RAW)
    assert dataset.ids == [f"{CAT}/a.png", f"{CAT}/b.png"]
    assert dataset.labels.tolist() == [imagenet_classes().index_of(CAT)] * 2
    assert "already listed" in caplog.text and "loop" in caplog.text
    result = invoke("download", "local", "--source", two_cats, "--dest", tmp_path / "dest")
    assert result.exit_code == 0, result.output
    assert read_index(tmp_path / "dest").ids == dataset.ids


def test_a_link_to_the_root_inside_it_adds_no_image(two_cats):
    (two_cats / CAT / "up").symlink_to("..")
    (two_cats / "again").symlink_to(CAT)  # a second way to a real folder
    assert find_images(two_cats) == [f"{CAT}/a.png", f"{CAT}/b.png"]


def test_linked_class_folders_elsewhere_are_followed_once_under_their_real_path(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    png(elsewhere / FOX / "c.png")
    root = tmp_path / "val"
    png(root / CAT / "a.png")
    (root / FOX).symlink_to(elsewhere / FOX)  # arranged datasets link class folders
    (root / "aaa").symlink_to(CAT)  # sorts first, but the real folder keeps its own path
    assert find_images(root) == [f"{FOX}/c.png", f"{CAT}/a.png"]


def test_a_fifo_named_like_an_image_is_skipped_and_never_opened(two_cats, caplog):
    fifo = two_cats / CAT / "x.JPEG"
    os.mkfifo(fifo)
    (two_cats / CAT / "broken.png").symlink_to("nowhere.png")
    with caplog.at_level(logging.WARNING):
        dataset = ImageFolderDataset(two_cats, RAW, skip_bad=True)
    assert dataset.ids == [f"{CAT}/a.png", f"{CAT}/b.png"]
    assert f"{fifo}: not a regular file" in caplog.text and "broken.png" in caplog.text


def test_reading_a_fifo_fails_at_once_instead_of_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "x.JPEG"
    os.mkfifo(fifo)
    raised = []

    def read():
        try:
            load_rgb(fifo)
        except OSError as error:
            raised.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():  # the read is stuck: open it for writing to let it go
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a FIFO waited for a writer")
    assert [str(e) for e in raised] == ["not a regular file"]


def test_a_duplicate_name_in_a_labels_file_names_the_file_the_name_and_both_lines(tmp_path):
    labels = tmp_path / "val.txt"
    labels.write_text(f"a.png {CAT}\n# comment\nb.png {FOX}\na.png {FOX}\n")
    message = f"labels file {labels}, line 4: image 'a.png' is labelled again (first on line 1)"
    with pytest.raises(DataError, match=re.escape(message)):
        read_labels_file(labels)


def test_a_duplicate_image_in_the_kaggle_csv_names_both_lines(tmp_path):
    source = tmp_path / "kaggle"
    png(source / "ILSVRC/Data/CLS-LOC/val/img1.JPEG")
    rows = [f"img1,{CAT} 1 2 3 4", f"img2,{FOX} 1 2 3 4", f"img1,{FOX} 1 2 3 4"]
    (source / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows))
    with pytest.raises(DataError, match=r"csv, line 4: image 'img1' .*first on line 2"):
        index_local(source, tmp_path / "dest")


@pytest.mark.parametrize(
    ("image_id", "problem"),
    [
        ("/etc/passwd", "is an absolute path"),
        ("../outside.png", "contains '..'"),
        (f"{CAT}/../../outside.png", "contains '..'"),
        ("", "is empty"),
        ("a\0b.png", "NUL"),
    ],
)
def test_ids_outside_the_root_are_refused_naming_the_id_and_the_source(tmp_path, image_id, problem):
    assert problem in image_id_problem(image_id)
    with pytest.raises(DataError, match=re.escape(f"store s.h5 has image id {image_id!r}")):
        safe_image_path(tmp_path, image_id, "store s.h5")


def test_ids_the_listing_gives_are_accepted(two_cats):
    for image_id in find_images(two_cats):
        assert image_id_problem(image_id) is None
        assert safe_image_path(two_cats, image_id, "store s.h5") == two_cats / image_id
