"""Check a prepared dataset before any saliency run: class counts, undecodable images, and the
label mapping, by a model's top-1 accuracy on a sample against its published accuracy.

The accuracy rule: with k of n sampled images right, the label mapping is flagged as likely wrong
when a one-sided exact binomial test rejects "accuracy >= half the published top-1" at level 0.001,
i.e. P(X <= k | n, published / 2) < 0.001. A right mapping lands near the published figure (a few
points lower or higher, from preprocessing and the sample); a wrong one near chance (0.1 %), so
halving the figure leaves room for the first and still catches the second from about 20 images.
The sample is drawn by `xaibench.data.index.subset_rows` and evaluated with the standard
ImageNet evaluation preprocessing (shorter side to input / 0.875, centre crop to the input size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from xaibench.core.precision import tf32_settings
from xaibench.core.progress import progress_bar
from xaibench.core.runtime import prepare_model
from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import ImageFolderDataset, folder_labels, list_images, make_loader
from xaibench.data.index import INDEX_FILE, DatasetIndex, read_index, subset_rows
from xaibench.data.preprocess import Preprocess
from xaibench.models.factory import LoadedModel
from xaibench.pipelines.settings import RunSettings

FLAG_LEVEL = 1e-3
CHECK_SIDE = 8  # decoded images are shrunk to this before batching: only decoding is checked


@dataclass
class AccuracyCheck:
    """Top-1 on a sample: `correct` of `images`, 99% Clopper-Pearson interval, the verdict."""

    images: int
    correct: int
    low: float
    high: float
    published: float | None
    p_value: float | None

    @property
    def accuracy(self) -> float:
        return 100 * self.correct / self.images

    @property
    def wrong_mapping(self) -> bool:
        return self.p_value is not None and self.p_value < FLAG_LEVEL


@dataclass
class VerifyReport:
    """Counts per class (1000,) of the images present, images the index lists that are missing,
    images without a class, undecodable images."""

    root: Path
    counts: np.ndarray
    expected_per_class: int | None
    unlabelled: int
    missing: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    accuracy: AccuracyCheck | None = None

    @property
    def deviations(self) -> dict[str, int]:
        """WNID -> count for every class whose count is not the expected one."""
        if self.expected_per_class is None:
            return {}
        wnids = imagenet_classes().wnids
        off = np.flatnonzero(self.counts != self.expected_per_class)
        return {wnids[k]: int(self.counts[k]) for k in off}

    @property
    def ok(self) -> bool:
        wrong = self.accuracy is not None and self.accuracy.wrong_mapping
        problems = self.deviations or self.missing or self.unreadable or self.unlabelled
        return not (problems or wrong)


@dataclass(frozen=True)
class PreparedFolder:
    """A dataset to check: its index and `found`, the ids of the images under the index's root
    (sorted), listed once and shared by every pass over the images."""

    index: DatasetIndex
    found: list[str]


def open_prepared(path: Path) -> PreparedFolder:
    """A folder written by `xaibench download` (read through its index), or a class-folder
    dataset as is; the image tree is walked once."""
    path = Path(path)
    if (path / INDEX_FILE).is_file():
        index = read_index(path)
        return PreparedFolder(index, list_images(index.root))
    found = list_images(path)
    return PreparedFolder(DatasetIndex(path.name, path, found, folder_labels(found)), found)


def _dataset(
    folder: PreparedFolder, preprocess: Preprocess, skip_bad: bool
) -> tuple[ImageFolderDataset, list[str]]:
    """The images under the index's root with the index's labels (-1 for images it does not
    list), and the ids the index lists that are missing from the root."""
    index = folder.index
    dataset = ImageFolderDataset(index.root, preprocess, skip_bad=skip_bad, found=folder.found)
    by_id = dict(zip(index.ids, index.labels.tolist(), strict=True))
    dataset.labels = np.array([by_id.get(i, -1) for i in dataset.ids], dtype=np.int64)
    return dataset, sorted(set(by_id) - set(dataset.ids))


def accuracy_rule(correct: int, images: int, published: float | None) -> AccuracyCheck:
    """The interval and the wrong-mapping test of the module docstring (published in %)."""
    low = stats.beta.ppf(0.005, correct, images - correct + 1) if correct else 0.0
    high = stats.beta.ppf(0.995, correct + 1, images - correct) if correct < images else 1.0
    p_value = None
    if published is not None:
        p_value = float(stats.binom.cdf(correct, images, published / 200))
    return AccuracyCheck(images, correct, 100 * low, 100 * high, published, p_value)


def sample_accuracy(
    folder: PreparedFolder,
    loaded: LoadedModel,
    sample: int,
    settings: RunSettings,
    seed: int = 0,
) -> AccuracyCheck:
    """Top-1 of `loaded` on a reproducible sample of `sample` labelled images, batched."""
    device = settings.device
    side = loaded.input_size[0]
    preprocess = Preprocess("eval", round(side / 0.875), side, loaded.mean, loaded.std)
    dataset, _ = _dataset(folder, preprocess, skip_bad=False)
    labelled = np.flatnonzero(dataset.labels >= 0)
    rows = labelled[subset_rows(dataset.labels[labelled], min(sample, len(labelled)), seed)]
    model = prepare_model(loaded.model, device)
    labels = torch.as_tensor(dataset.labels)
    correct = 0
    bar = progress_bar(total=len(rows), unit="img", desc="accuracy", disable=not settings.progress)
    loader = make_loader(dataset, settings.batch_size, settings.workers, rows, device)
    with bar:
        for images, indices in loader:
            images = images.to(device).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), tf32_settings():
                predicted = model(images).argmax(1).cpu()
            correct += int((predicted == labels[indices]).sum())
            bar.update(len(indices))
    return accuracy_rule(correct, len(rows), loaded.published_top1)


def verify_dataset(
    folder: PreparedFolder,
    settings: RunSettings,
    expected_per_class: int | None = None,
) -> VerifyReport:
    """Count images per class and decode every image (batched, `settings.workers` processes)."""
    index = folder.index
    expected = expected_per_class or index.expected_per_class
    dataset, missing = _dataset(folder, Preprocess(resize=(CHECK_SIDE, CHECK_SIDE)), skip_bad=True)
    labels = dataset.labels
    counts = np.bincount(labels[labels >= 0], minlength=len(imagenet_classes()))
    decoded = 0
    bar = progress_bar(
        total=len(dataset), unit="img", desc="decoding", disable=not settings.progress
    )
    with bar:
        for _, indices in make_loader(dataset, settings.batch_size, settings.workers):
            decoded += len(indices)
            bar.update(decoded + len(dataset.bad) - bar.n)
        bar.update(len(dataset) - bar.n)
    unlabelled = int((labels < 0).sum())
    return VerifyReport(index.root, counts, expected, unlabelled, missing, dataset.bad_ids)
