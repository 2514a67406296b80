"""verify (counts, undecodable images, the accuracy rule) and reproducible stratified subsets."""

import re

import numpy as np
import pytest
import torch
import torchvision
from scipy import stats
from synthetic_imagenet import jpeg_bytes
from torch import nn

from xaibench.core.errors import ConfigError, DataError, ModelError
from xaibench.data import dataset as dataset_module
from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import ImageFolderDataset
from xaibench.data.index import read_index, subset_rows, write_index, write_subset
from xaibench.data.local import index_local
from xaibench.data.preprocess import Preprocess
from xaibench.data.samples import SAMPLES, build_sample_dataset
from xaibench.models import load_model
from xaibench.models.factory import MODELS, LoadedModel
from xaibench.pipelines.settings import RunSettings
from xaibench.pipelines.verify import accuracy_rule, open_prepared, sample_accuracy, verify_dataset


def class_folders(root, per_class):
    """`per_class` {class index: count} JPEGs in WNID folders under root."""
    classes = imagenet_classes()
    for k, count in per_class.items():
        folder = root / classes.wnid(k)
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(count):
            (folder / f"img{j}.JPEG").write_bytes(jpeg_bytes(k * 100 + j))
    return root


def test_counts_per_class_and_unreadable_images(tmp_path):
    root = class_folders(tmp_path / "val", {0: 3, 5: 3, 9: 2})
    (root / imagenet_classes().wnid(5) / "img1.JPEG").write_bytes(b"truncated")
    settings = RunSettings.resolve(batch_size=3, progress=False)
    report = verify_dataset(open_prepared(root), settings, expected_per_class=3)
    assert report.counts[[0, 5, 9]].tolist() == [3, 3, 2] and report.counts.sum() == 8
    deviations = report.deviations
    assert deviations[imagenet_classes().wnid(9)] == 2 and len(deviations) == 998
    assert report.unreadable == [f"{imagenet_classes().wnid(5)}/img1.JPEG"]
    assert not report.ok


def test_verify_cli_reports_and_exits_1_on_problems(tmp_path, invoke):
    root = class_folders(tmp_path / "val", {3: 2})
    ok = invoke("verify", root, "--quiet")
    assert ok.exit_code == 0, ok.output
    assert "2 labelled images in 1 classes (2 to 2 per class)" in ok.output
    assert "unreadable images: none" in ok.output
    bad = invoke("verify", root, "--quiet", "--expect-per-class", 2, catch_exceptions=True)
    assert bad.exit_code == 1 and "expected 2 per class: 999 class(es) differ" in bad.output


def count_calls(monkeypatch, module, name):
    """Count the calls of `module.name` (still doing its work); returns the list of calls."""
    real, calls = getattr(module, name), []

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize(
    ("model", "error"),
    [
        (["--model", "tiny_models:no_such_model"], ConfigError),
        (["--model", "tiny_models:tiny_cnn", "--weights", "missing/weights.pt"], ModelError),
    ],
)
def test_a_bad_model_fails_before_any_image_is_decoded(tmp_path, monkeypatch, model, error, invoke):
    root = class_folders(tmp_path / "val", {3: 4})
    decoded = count_calls(monkeypatch, dataset_module, "load_rgb")
    result = invoke("verify", root, "--quiet", *model, catch_exceptions=True)
    assert isinstance(result.exception, error), result.output
    assert decoded == []


def test_verify_with_a_model_walks_the_images_once_and_decodes_each_pass(
    tmp_path, monkeypatch, invoke
):
    root = class_folders(tmp_path / "val", {3: 4, 8: 2})
    index_local(root, tmp_path / "index")
    walks = count_calls(monkeypatch, dataset_module, "find_images")
    decoded = count_calls(monkeypatch, dataset_module, "load_rgb")
    args = ["verify", str(tmp_path / "index"), "--quiet", "--model", "tiny_models:tiny_cnn"]
    result = invoke(*args, "--sample", 4)
    assert result.exit_code == 0, result.output
    assert len(walks) == 1 and len(decoded) == 6 + 4  # every image, then the sample
    assert f"{root}: 6 labelled images in 2 classes (2 to 4 per class)" in result.output
    assert re.search(
        r"top-1 of tiny_models:tiny_cnn \(user\) on 4 images: \d+\.\d% \(99% CI \d+\.\d to "
        r"\d+\.\d\); no published accuracy for these weights, so no verdict",
        result.output,
    )


def test_interval_is_clopper_pearson_and_the_flag_follows_the_rule():
    for correct, images in [(0, 24), (7, 24), (24, 24), (371, 500)]:
        check = accuracy_rule(correct, images, 75.1)
        reference = stats.binomtest(correct, images).proportion_ci(0.99, method="exact")
        assert check.low == pytest.approx(100 * reference.low, abs=1e-9)
        assert check.high == pytest.approx(100 * reference.high, abs=1e-9)
        assert check.p_value == pytest.approx(stats.binom.cdf(correct, images, 0.3755))
    assert accuracy_rule(0, 24, 75.1).wrong_mapping  # a wrong mapping: near chance
    assert accuracy_rule(1, 50, 75.1).wrong_mapping
    assert not accuracy_rule(17, 24, 75.1).wrong_mapping  # 71 %: fine
    assert not accuracy_rule(5, 24, 75.1).wrong_mapping  # too few images to tell
    assert not accuracy_rule(0, 24, None).wrong_mapping  # nothing published: no verdict


class Always(nn.Module):
    """Predicts class `k` for every image."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), self.k), 1000).float()


def test_sample_accuracy_flags_a_shifted_label_mapping(tmp_path):
    root = class_folders(tmp_path / "val", {7: 30})
    loaded = LoadedModel("always7", Always(7), "test", (0.5,) * 3, (0.5,) * 3, (32, 32), 80.0)
    right = index_local(root, tmp_path / "right")[1]
    settings = RunSettings.resolve(batch_size=8, progress=False)
    check = sample_accuracy(open_prepared(tmp_path / "right"), loaded, 20, settings)
    assert (check.images, check.correct, check.wrong_mapping) == (20, 20, False)
    shifted = tmp_path / "shifted.txt"  # devkit ID - 1 style: every label off by one
    shifted.write_text(
        "".join(f"{i} {label + 1}\n" for i, label in zip(right.ids, right.labels, strict=True))
    )
    index_local(root, tmp_path / "wrong", shifted)
    check = sample_accuracy(open_prepared(tmp_path / "wrong"), loaded, 20, settings)
    assert (check.images, check.correct, check.wrong_mapping) == (20, 0, True)


@pytest.mark.slow
def test_efficientnet_lite0_confirms_the_sample_labels_and_flags_shifted_ones(tmp_path, invoke):
    pytest.importorskip("efficientnet_lite_pytorch")
    photos = build_sample_dataset(tmp_path / "photos")
    for name, wnid, _ in SAMPLES:  # three copies of each photo: enough images for a verdict
        for copy in range(2):
            (photos / wnid / f"{copy}-{name}").write_bytes((photos / wnid / name).read_bytes())
    args = ["--model", "efficientnet_lite0", "--sample", "18", "--quiet"]
    index_local(photos, tmp_path / "right")
    right = invoke("verify", tmp_path / "right", *args, catch_exceptions=True)
    assert right.exit_code == 0, right.output
    assert "on 18 images" in right.output and "published 75.1%: consistent" in right.output
    index = read_index(tmp_path / "right")
    shifted = tmp_path / "shifted.txt"
    shifted.write_text(
        "".join(f"{i} {(k + 1) % 1000}\n" for i, k in zip(index.ids, index.labels, strict=True))
    )
    index_local(photos, tmp_path / "wrong", shifted)
    wrong = invoke("verify", tmp_path / "wrong", *args, catch_exceptions=True)
    assert wrong.exit_code == 1 and "the label mapping is likely wrong" in wrong.output


def balanced_labels(per_class):
    return np.repeat(np.arange(1000), per_class)


def test_subsets_are_stratified_and_reproducible():
    labels = balanced_labels(5)
    rows = subset_rows(labels, 2000, seed=0)
    assert len(set(rows.tolist())) == 2000 and np.bincount(labels[rows]).tolist() == [2] * 1000
    assert np.array_equal(rows, subset_rows(labels, 2000, seed=0))
    assert not np.array_equal(rows, subset_rows(labels, 2000, seed=1))
    uneven = np.bincount(labels[subset_rows(labels, 2500, seed=4)], minlength=1000)
    assert uneven.sum() == 2500 and set(uneven.tolist()) == {2, 3}
    small = subset_rows(labels, 10, seed=0)
    assert len(small) == 10 and np.array_equal(small, np.sort(small))
    with pytest.raises(ConfigError, match=r"a subset of 5001 images: choose 1\.\.5000"):
        subset_rows(labels, 5001, seed=0)


def test_a_class_with_too_few_images_is_made_up_from_the_others():
    labels = np.concatenate([balanced_labels(3)[3:], [0]])  # class 0 has one image
    rows = subset_rows(labels, 2000, seed=2)
    counts = np.bincount(labels[rows], minlength=1000)
    assert len(np.unique(rows)) == 2000 and counts[0] == 1 and counts[1:].min() == 2


def test_write_subset_writes_a_labels_file(tmp_path):
    classes = imagenet_classes()
    ids = [f"{classes.wnid(k)}/{j}.JPEG" for k in range(1000) for j in range(3)]
    write_index(tmp_path, "test", tmp_path / "val", ids, balanced_labels(3))
    path = write_subset(tmp_path, 1500, seed=9)
    lines = path.read_text().splitlines()
    assert path.name == "subset-1500-seed9.txt" and len(lines) == 1500
    for line in lines:
        image_id, index, wnid = line.split()
        assert image_id.split("/")[0] == wnid == classes.wnid(int(index))
    assert write_subset(tmp_path, 1500, seed=9).read_text() == path.read_text()


def test_the_dataset_reads_only_the_images_of_a_subset_file(tmp_path):
    root = class_folders(tmp_path / "val", {0: 3, 1: 3})
    subset = tmp_path / "subset.txt"
    wnid0, wnid1 = imagenet_classes().wnid(0), imagenet_classes().wnid(1)
    subset.write_text(f"# two images\n{wnid1}/img2.JPEG 1 {wnid1}\n{wnid0}/img0.JPEG 0 {wnid0}\n")
    dataset = ImageFolderDataset(root, Preprocess(resize=(8, 8)), subset_file=subset)
    assert dataset.ids == [f"{wnid0}/img0.JPEG", f"{wnid1}/img2.JPEG"]
    assert dataset.labels.tolist() == [0, 1]
    subset.write_text(f"{wnid0}/img9.JPEG 0 {wnid0}\n")
    with pytest.raises(DataError, match=f"subset file {subset} names 1 image.*img9"):
        ImageFolderDataset(root, Preprocess(resize=(8, 8)), subset_file=subset)


def test_published_accuracy_comes_with_the_model():
    v1 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert load_model("resnet18", "none").published_top1 is None
    assert load_model("efficientnet_lite0", "none").published_top1 is None
    assert MODELS.get("resnet18").published_top1("IMAGENET1K_V1") == v1 == 69.758
    assert MODELS.get("resnet50").published_top1("default") == 80.858  # the V2 weights
    assert MODELS.get("efficientnet_lite0").published_top1("default") == 75.1


def test_verify_decodes_with_the_devices_default_workers_unless_given(
    tmp_path, monkeypatch, invoke
):
    import dataclasses

    from xaibench.core import runtime
    from xaibench.pipelines import verify as verify_pipeline

    root = class_folders(tmp_path / "val", {3: 2})
    asked = []
    real = verify_pipeline.verify_dataset
    monkeypatch.setitem(runtime.DEFAULT_WORKERS, "cpu", 3)
    monkeypatch.setattr(
        verify_pipeline,
        "verify_dataset",
        lambda prepared, settings, expect: (
            asked.append(settings.workers)
            or real(prepared, dataclasses.replace(settings, workers=0), expect)
        ),
    )
    for extra in ([], ["--workers", "1"]):
        result = invoke("verify", root, "--quiet", *extra, catch_exceptions=True)
        assert result.exit_code == 0, result.output
    assert asked == [3, 1]
