import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from xaibench.core.errors import DataError
from xaibench.data.dataset import BadImage, ImageFolderDataset, load_rgb, make_loader
from xaibench.data.preprocess import Preprocess

# Identity normalisation: a preprocessed pixel is its 8-bit value / 255.
RAW = Preprocess("test", (16, 16), None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
KIT_FOX, GOLDFISH = "n02119789", "n01443537"  # classes 278 and 1


def save(path, image, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt)
    return path


def rgb(color=(200, 30, 60), size=(24, 20)):
    return Image.new("RGB", size, color)


@pytest.fixture
def class_folders(tmp_path):
    root = tmp_path / "val"
    save(root / KIT_FOX / "b.JPEG", rgb())
    save(root / KIT_FOX / "a.png", rgb((0, 0, 255)))
    save(root / GOLDFISH / "c.jpg", rgb((0, 255, 0)))
    return root


@pytest.fixture
def flat(tmp_path):
    root = tmp_path / "flat"
    for i in (1, 2, 3):
        save(root / f"ILSVRC2012_val_0000000{i}.JPEG", rgb((40 * i, 0, 0)))
    return root


def test_class_folders_label_by_sorted_wnid_position(class_folders):
    ds = ImageFolderDataset(class_folders, RAW)
    assert ds.ids == [f"{GOLDFISH}/c.jpg", f"{KIT_FOX}/a.png", f"{KIT_FOX}/b.JPEG"]
    assert ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [1, 278, 278]
    image, index = ds[1]
    assert index == 1
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32
    assert torch.allclose(image, torch.tensor([0.0, 0.0, 1.0])[:, None, None])


def test_unknown_wnid_folder_is_an_error(tmp_path):
    save(tmp_path / "n99999999" / "x.png", rgb())
    with pytest.raises(DataError, match="n99999999"):
        ImageFolderDataset(tmp_path, RAW)


def test_flat_folder_with_three_column_labels_ignores_the_middle_number(flat, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text(
        "ILSVRC2012_val_00000001.JPEG 065 n01751748\n"
        f"ILSVRC2012_val_00000002.JPEG 999 {KIT_FOX}\n"
        "\n"
        f"ILSVRC2012_val_00000003.JPEG 0 {GOLDFISH}\n"
    )
    ds = ImageFolderDataset(flat, RAW, labels_file=labels)
    assert ds.ids == [f"ILSVRC2012_val_0000000{i}.JPEG" for i in (1, 2, 3)]
    assert ds.labels.tolist() == [65, 278, 1]


def test_two_column_labels_take_a_wnid_or_a_sorted_index(flat, tmp_path):
    labels = tmp_path / "val.txt"
    labels.write_text(f"ILSVRC2012_val_00000001.JPEG {KIT_FOX}\nILSVRC2012_val_00000002.JPEG 7\n")
    ds = ImageFolderDataset(flat, RAW, labels_file=labels)
    assert ds.labels.tolist() == [278, 7, -1]


@pytest.mark.parametrize(
    "line, message",
    [
        ("ILSVRC2012_val_00000001.JPEG 1 n99999999", "line 1.*n99999999"),
        ("ILSVRC2012_val_00000001.JPEG 1000", "line 1.*'1000'"),
        ("ILSVRC2012_val_00000001.JPEG", "line 1"),
    ],
)
def test_bad_labels_lines_are_named(flat, tmp_path, line, message):
    labels = tmp_path / "labels.txt"
    labels.write_text(line + "\n")
    with pytest.raises(DataError, match=message):
        ImageFolderDataset(flat, RAW, labels_file=labels)


def test_labels_file_naming_a_missing_image(flat, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text(f"ILSVRC2012_val_00000009.JPEG 1 {KIT_FOX}\n")
    with pytest.raises(DataError, match=r"ILSVRC2012_val_00000009\.JPEG.*pass the folder"):
        ImageFolderDataset(flat, RAW, labels_file=labels)


def test_missing_labels_file(flat, tmp_path):
    with pytest.raises(DataError, match=r"nope\.txt"):
        ImageFolderDataset(flat, RAW, labels_file=tmp_path / "nope.txt")


def test_folder_without_labels_and_limit(flat):
    ds = ImageFolderDataset(flat, RAW, limit=2)
    assert len(ds) == 2
    assert ds.labels.tolist() == [-1, -1]


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "absent", RAW)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        ImageFolderDataset(tmp_path / "empty", RAW)


def test_hidden_and_non_image_files_are_ignored(flat):
    (flat / "._ILSVRC2012_val_00000001.JPEG").write_bytes(b"resource fork")
    (flat / "README").write_text("x")
    assert len(ImageFolderDataset(flat, RAW)) == 3


def test_image_modes_are_converted_to_rgb(tmp_path):
    palette = rgb((10, 120, 250)).convert("P", palette=Image.Palette.ADAPTIVE)
    save(tmp_path / "cmyk.jpg", Image.new("CMYK", (24, 20), (0, 255, 255, 0)))
    save(tmp_path / "gray.png", Image.new("L", (24, 20), 77))
    save(tmp_path / "gray16.png", Image.fromarray(np.full((20, 24), 0x8080, np.uint16)))
    save(tmp_path / "rgba.png", Image.new("RGBA", (24, 20), (10, 200, 30, 128)))
    palette.save(tmp_path / "palette.png", transparency=0)
    expected = {
        "cmyk.jpg": (255, 0, 0),
        "gray.png": (77, 77, 77),
        "gray16.png": (128, 128, 128),
        "palette.png": (10, 120, 250),
        "rgba.png": (10, 200, 30),
    }
    ds = ImageFolderDataset(tmp_path, RAW)
    assert ds.ids == sorted(expected)
    for i, name in enumerate(ds.ids):
        image = ds.open_image(i)
        assert image.mode == "RGB"
        assert np.abs(np.asarray(image, float) - expected[name]).max() <= 2, name
        tensor, _ = ds[i]
        assert tensor.shape == (3, 16, 16)


def corrupt(root):
    """A file that is not an image and a JPEG cut in half."""
    (root / "zz_garbage.JPEG").write_bytes(b"this is not an image")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, "JPEG"
    )
    (root / "zz_truncated.JPEG").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_corrupt_image_names_the_file_and_the_fix(flat):
    corrupt(flat)
    ds = ImageFolderDataset(flat, RAW)
    for i in (3, 4):
        with pytest.raises(DataError, match=rf"{ds.ids[i]}.*pass `skip_bad` to leave it out"):
            ds[i]


def test_skip_bad_returns_a_sentinel_and_records_it(flat):
    corrupt(flat)
    ds = ImageFolderDataset(flat, RAW, skip_bad=True)
    item = ds[3]
    assert isinstance(item, BadImage) and item.index == 3 and "zz_garbage" in item.reason
    assert ds.bad_ids == ["zz_garbage.JPEG"]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_drops_bad_images_and_records_them_from_workers(flat, workers, caplog):
    corrupt(flat)
    ds = ImageFolderDataset(flat, RAW, skip_bad=True)
    with caplog.at_level(logging.WARNING):
        batches = list(make_loader(ds, batch_size=2, workers=workers))
    indices = torch.cat([i for _, i in batches])
    assert indices.dtype == torch.int64
    assert indices.tolist() == [0, 1, 2]
    assert [b.shape[0] for b, _ in batches] == [2, 1]  # the batch of two bad images is skipped
    assert ds.bad_ids == ["zz_garbage.JPEG", "zz_truncated.JPEG"]
    assert "zz_truncated.JPEG" in caplog.text


def test_loader_with_two_workers_over_a_subset(class_folders):
    ds = ImageFolderDataset(class_folders, RAW)
    loader = make_loader(ds, batch_size=2, workers=2, indices=np.array([2, 0]))
    batches = list(loader)
    images = torch.cat([b for b, _ in batches])
    assert torch.cat([i for _, i in batches]).tolist() == [2, 0]
    assert images.shape == (2, 3, 16, 16)
    assert torch.equal(images[1], ds[0][0])


def test_loader_without_skip_bad_raises(flat):
    corrupt(flat)
    ds = ImageFolderDataset(flat, RAW)
    with pytest.raises(DataError, match="zz_garbage"):
        list(make_loader(ds, batch_size=8, workers=0))


def test_load_rgb_reads_what_was_written(tmp_path):
    path = save(tmp_path / "x.png", rgb((1, 2, 3)))
    assert np.asarray(load_rgb(path))[0, 0].tolist() == [1, 2, 3]
