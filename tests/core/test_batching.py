"""Out-of-memory back-off: halve the batch or chunk and go on, with the same results."""

import logging

import numpy as np
import pytest
import torch
from tiny_models import FitsOnly, tiny_cnn

from xaibench.core.batching import ChunkSize, apply_in_chunks, run_in_chunks
from xaibench.core.errors import OutOfMemory
from xaibench.data.dataset import ImageFolderDataset
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.models.factory import LoadedModel
from xaibench.pipelines.evaluate import evaluate_store
from xaibench.pipelines.generate import generate
from xaibench.pipelines.settings import RunSettings
from xaibench.store import open_store

CPU = torch.device("cpu")


def fits(limit):
    def fn(values):
        if len(values) > limit:
            raise torch.OutOfMemoryError(f"{len(values)} > {limit} (simulated)")
        return values * 2

    return fn


def test_chunks_are_halved_until_they_fit_and_finished_chunks_are_kept(caplog):
    values = torch.arange(21.0)
    calls = []
    size = ChunkSize(16)

    def fn(part):
        calls.append((part.start, part.stop))
        return fits(5)(values[part])

    with caplog.at_level(logging.WARNING):
        parts = run_in_chunks(fn, len(values), size)
    assert torch.equal(torch.cat(parts), values * 2)
    assert size.value == 4 and size.reduced and size.requested == 16
    assert calls[:3] == [(0, 16), (0, 8), (0, 4)]  # each failed chunk retried from its start
    assert [c for c in calls if c[1] - c[0] <= 4] == [(s, min(s + 4, 21)) for s in range(0, 21, 4)]
    assert "chunk_size lowered to 8" in caplog.text and "lowered to 4" in caplog.text
    # A shared size is not tried large again on the next call.
    assert torch.equal(apply_in_chunks(fits(5), values, chunk_size=size), values * 2)
    assert size.value == 4


def test_a_chunk_of_one_that_does_not_fit_is_a_clear_error():
    with pytest.raises(OutOfMemory, match="chunk_size of 1"):
        apply_in_chunks(fits(0), torch.ones(3), chunk_size=2)


def test_other_errors_are_not_retried():
    size = ChunkSize(8)

    def broken(values):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        apply_in_chunks(broken, torch.ones(3), chunk_size=size)
    assert size.value == 8


def loaded_fitting(limit):
    plain = load_model("tiny_models:tiny_cnn")
    net = FitsOnly(tiny_cnn(), limit) if limit else tiny_cnn()
    return LoadedModel(plain.name, net, plain.weights, plain.mean, plain.std)


def run_generate(image_folder, out, limit, batch_size):
    dataset = ImageFolderDataset(image_folder, get_protocol("polycam").preprocess())
    return generate(
        loaded_fitting(limit),
        ["tgrad", "gradcam"],
        dataset,
        out,
        settings=RunSettings.resolve(CPU, batch_size=batch_size, progress=False),
    )


def test_generate_halves_the_batch_of_a_method_that_runs_out_of_memory(image_folder, tmp_path):
    full = run_generate(image_folder, tmp_path / "full", limit=None, batch_size=6)
    assert full.batch_sizes == {}
    small = run_generate(image_folder, tmp_path / "small", limit=2, batch_size=6)
    assert small.batch_sizes == {"tgrad": 1, "gradcam": 1}  # 6 -> 3 -> 1
    assert small.images == 6
    for method in ("tgrad", "gradcam"):
        name = f"tiny_models_tiny_cnn/{method}.h5"
        with open_store(tmp_path / "full" / name) as a, open_store(tmp_path / "small" / name) as b:
            assert b.complete
            np.testing.assert_allclose(
                b.read_maps(range(6)), a.read_maps(range(6)), rtol=1e-5, atol=1e-7
            )
            np.testing.assert_array_equal(b.targets, a.targets)
            np.testing.assert_allclose(b.scores, a.scores, rtol=1e-5)


def test_evaluate_halves_the_chunk_and_records_it(image_folder, tmp_path):
    run_generate(image_folder, tmp_path, limit=None, batch_size=6)
    dataset = ImageFolderDataset(image_folder, get_protocol("polycam").preprocess())
    results = []
    for limit in (None, 5):
        results.append(
            evaluate_store(
                tmp_path / "tiny_models_tiny_cnn" / "gradcam.h5",
                loaded_fitting(limit),
                dataset,
                get_protocol("polycam", step=8000),
                ["insertion", "deletion", "avg_drop"],
                settings=RunSettings.resolve(CPU, batch_size=3, chunk_size=16, progress=False),
                limit=3,
            )
        )
    full, small = results
    assert set(full.summary["chunk_size"]) == {16}
    assert set(small.summary["chunk_size"]) == {4}  # 16 -> 8 -> 4
    columns = ["clean_score", "insertion", "deletion", "avg_drop"]
    np.testing.assert_allclose(small.per_image[columns], full.per_image[columns], rtol=1e-5)
    for name in ("insertion", "deletion"):
        np.testing.assert_allclose(small.curves[name], full.curves[name], rtol=1e-5)


def test_an_inner_chunked_call_that_cannot_go_lower_halves_the_outer_chunk():
    values = torch.arange(10.0)
    outer = ChunkSize(8, "batch_size")

    def explain(part):  # a method chunking its own work: only 2 images at a time fit at all
        images = values[part]

        def inner(chunk):
            if len(images) > 2:
                raise torch.OutOfMemoryError("simulated")
            return chunk * 2

        return apply_in_chunks(inner, images, chunk_size=4)

    parts = run_in_chunks(explain, len(values), outer)
    assert torch.equal(torch.cat(parts), values * 2)
    assert outer.value == 2


def test_a_kept_inner_chunk_starts_afresh_once_the_outer_chunk_takes_the_failure():
    values = torch.arange(10.0)
    outer, inner_size = ChunkSize(8, "batch_size"), ChunkSize(4, "sample_batch")
    sizes = []

    def explain(part):  # the method keeps its own chunk size across calls (ChunkSizes)
        images = values[part]

        def inner(chunk):
            if len(images) > 2:  # whatever the inner size, more than 2 images never fit
                raise torch.OutOfMemoryError("simulated")
            sizes.append(len(chunk))
            return chunk * 2

        return apply_in_chunks(inner, images, chunk_size=inner_size)

    parts = run_in_chunks(explain, len(values), outer)
    assert torch.equal(torch.cat(parts), values * 2)
    assert outer.value == 2 and inner_size.value == 4  # not left at 1 for the rest of the run
    assert set(sizes) == {2}  # each 2-image batch in one inner chunk


def test_halving_starts_from_the_length_of_the_chunk_that_failed():
    values, calls = torch.arange(50.0), []

    def fn(part):
        calls.append(part.stop - part.start)
        return fits(10)(values[part])

    parts = run_in_chunks(fn, len(values), ChunkSize(256))
    assert torch.equal(torch.cat(parts), values * 2)
    assert calls[:4] == [50, 25, 12, 6]  # not 256 -> 128 -> 64 on the same 50 items


@pytest.mark.parametrize(
    "message",
    [
        "cuDNN error: CUDNN_STATUS_ALLOC_FAILED",
        "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
        "CUDA out of memory. Tried to allocate 2.00 GiB",
    ],
)
def test_cudnn_and_cublas_allocation_failures_are_out_of_memory(message):
    values, size = torch.arange(8.0), ChunkSize(8)

    def fn(part):
        if part.stop - part.start > 2:
            raise RuntimeError(message)
        return values[part]

    assert torch.equal(torch.cat(run_in_chunks(fn, len(values), size)), values)
    assert size.value == 2


def test_a_result_too_large_to_join_halves_the_enclosing_chunk(monkeypatch):
    values, outer = torch.arange(12.0), ChunkSize(8, "batch_size")
    join = torch.cat

    def cat_of_at_most_four(parts, *args, **kwargs):
        if sum(len(p) for p in parts) > 4:
            raise torch.OutOfMemoryError("simulated")
        return join(parts, *args, **kwargs)

    def explain(part):  # chunks of 2 fit, joining more than 4 results does not
        return apply_in_chunks(lambda x: x * 2, values[part], chunk_size=2)

    monkeypatch.setattr(torch, "cat", cat_of_at_most_four)
    with pytest.raises(OutOfMemory, match="joining 12 results of chunk_size chunks"):
        explain(slice(0, 12))  # alone: one clear error, not torch's
    parts = run_in_chunks(explain, len(values), outer)
    monkeypatch.undo()
    assert torch.equal(torch.cat(parts), values * 2)
    assert outer.value == 4


def test_an_out_of_memory_in_road_lowers_roads_chunk_size_alone(
    image_folder, tmp_path, monkeypatch
):
    import xaibench.metrics.road as road

    run_generate(image_folder, tmp_path, limit=None, batch_size=6)
    dataset = ImageFolderDataset(image_folder, get_protocol("polycam").preprocess())
    impute = road.linear_imputation

    def imputation_of_at_most_four(images, removed):
        if len(images) > 4:
            raise torch.OutOfMemoryError("simulated")
        return impute(images, removed)

    results = []
    for patched in (False, True):
        if patched:
            monkeypatch.setattr(road, "linear_imputation", imputation_of_at_most_four)
        results.append(
            evaluate_store(
                tmp_path / "tiny_models_tiny_cnn" / "gradcam.h5",
                loaded_fitting(None),
                dataset,
                get_protocol("polycam", step=8000),
                ["insertion", "road_morf", "road_lerf"],
                settings=RunSettings.resolve(CPU, batch_size=3, chunk_size=16, progress=False),
                limit=3,
            )
        )
    full, small = results
    sizes = dict(zip(small.summary["metric"], small.summary["chunk_size"], strict=True))
    assert sizes["insertion"] == 16 and sizes["road_morf"] == sizes["road_lerf"] == 4
    assert set(full.summary["chunk_size"]) == {16}
    columns = ["insertion", "road_morf", "road_lerf"]
    np.testing.assert_allclose(small.per_image[columns], full.per_image[columns], rtol=1e-5)
