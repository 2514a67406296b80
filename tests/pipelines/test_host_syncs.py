"""Host synchronisations in generate's and evaluate's loops: a fixed number per batch, whatever the
number of chunks a batch's work is split into.

Counted: the calls that make the host wait for a device's queued work when their tensor is on one
(`SYNCS`: `Tensor.item`, `tolist`, `numpy`, `cpu`, the conversions to bool, int, float and index,
and `torch.cuda.synchronize`). On the CPU they wait for nothing, but they are the same calls: a
count that grows with the chunks here would grow on a GPU too. Host-to-device copies of small
tensors are not counted: on the CPU they cannot be told from other tensor creation.
"""

from collections import Counter

import pytest
import torch
from tiny_run import make_images

from xaibench.data.dataset import ImageFolderDataset
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.pipelines.evaluate import evaluate_store
from xaibench.pipelines.generate import generate
from xaibench.pipelines.settings import RunSettings

MODEL = "tiny_models:tiny_cnn"
BATCH = 2
SYNCS = (
    (torch.Tensor, "item"),
    (torch.Tensor, "tolist"),
    (torch.Tensor, "numpy"),
    (torch.Tensor, "cpu"),
    (torch.Tensor, "__bool__"),
    (torch.Tensor, "__int__"),
    (torch.Tensor, "__float__"),
    (torch.Tensor, "__index__"),
    (torch.cuda, "synchronize"),
)
STEP = 3136  # 16 points per curve at 224 x 224: 32 (image, point) pairs per batch of 2


def settings(chunk_size: int = 64) -> RunSettings:
    return RunSettings.resolve("cpu", batch_size=BATCH, chunk_size=chunk_size, progress=False)


@pytest.fixture()
def count_syncs(monkeypatch):
    """count_syncs(fn) -> the number of `SYNCS` calls made while fn() runs."""

    def count(fn) -> int:
        counts = Counter()
        with monkeypatch.context() as patch:
            for owner, name in SYNCS:
                original = getattr(owner, name)

                def counted(*args, _original=original, _name=name, **kwargs):
                    counts[_name] += 1
                    return _original(*args, **kwargs)

                patch.setattr(owner, name, counted)
            fn()
        return sum(counts.values())

    return count


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Image folders of 1, 2 and 3 batches."""
    root = tmp_path_factory.mktemp("images")
    return {batches: make_images(root / str(batches), BATCH * batches) for batches in (1, 2, 3)}


def generate_syncs(count_syncs, tmp_path, folder, methods, params=None) -> int:
    loaded = load_model(MODEL)
    dataset = ImageFolderDataset(folder, get_protocol("polycam").preprocess())
    out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    return count_syncs(
        lambda: generate(
            loaded, methods, dataset, out, settings(), method_params=params, write_queue=0
        )
    )


def assert_per_batch(counts: list[int]) -> None:
    """counts for 1, 2 and 3 batches grow by the same number per batch."""
    assert counts[2] - counts[1] == counts[1] - counts[0], counts


@pytest.mark.parametrize(
    ("methods", "params", "chunked"),
    [
        (["gradient", "tgrad"], {}, None),
        (["gradcam", "gradcampp", "centre"], {}, None),
        (["smoothgrad"], {"smoothgrad": {"samples": 4}}, ("smoothgrad", "sample_batch")),
        (["intgrad"], {"intgrad": {"steps": 4}}, ("intgrad", "step_batch")),
        (["rise"], {"rise": {"masks": 8}}, ("rise", "mask_batch")),
    ],
)
def test_generate_syncs_a_fixed_number_of_times_per_batch_whatever_the_chunks(
    count_syncs, images, tmp_path, methods, params, chunked
):
    counts = [generate_syncs(count_syncs, tmp_path, images[b], methods, params) for b in (1, 2, 3)]
    assert_per_batch(counts)
    if chunked is None:
        return
    method, setting = chunked
    pairs = BATCH * next(iter(params[method].values()))  # 8 (image, sample) pairs per batch
    for chunk in (pairs, pairs // 4):  # 1 chunk, then 4
        chunked_params = {method: {**params[method], setting: chunk}}
        assert (
            generate_syncs(count_syncs, tmp_path, images[3], methods, chunked_params) == counts[2]
        )


@pytest.fixture(scope="module")
def store(images, tmp_path_factory):
    """A random-baseline store of the 3-batch folder."""
    out = tmp_path_factory.mktemp("store")
    dataset = ImageFolderDataset(images[3], get_protocol("polycam").preprocess())
    generate(load_model(MODEL), ["random"], dataset, out, settings())
    return out / "tiny_models_tiny_cnn" / "random.h5"


def test_evaluate_syncs_a_fixed_number_of_times_per_batch_whatever_the_chunks(
    count_syncs, images, store
):
    loaded = load_model(MODEL)
    dataset = ImageFolderDataset(images[3], get_protocol("polycam").preprocess())
    protocol = get_protocol("polycam", step=STEP)
    metrics = ["insertion", "deletion", "ins_del", "avg_drop", "increase"]

    def syncs(batches: int, chunk_size: int = 64) -> int:
        run = settings(chunk_size)
        limit = BATCH * batches
        return count_syncs(
            lambda: evaluate_store(store, loaded, dataset, protocol, metrics, run, limit=limit)
        )

    counts = [syncs(b) for b in (1, 2, 3)]
    assert_per_batch(counts)
    # insertion and deletion: 32 pairs per batch in 1, 4 or 32 chunks; avg_drop: 1 or 2 chunks
    assert syncs(3, chunk_size=8) == counts[2]
    assert syncs(3, chunk_size=1) == counts[2]
