import math

import numpy as np
import pytest
import torch
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.metrics import (
    METRICS,
    MetricContext,
    apply_in_chunks,
    get_protocol,
    pixel_ranks,
    saliency_at_input_size,
    score_function,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
FAITHFULNESS = ["insertion", "deletion", "ins_del", "avg_drop", "increase"]


def context(images, saliency, score_fn, protocol, targets=None, **kwargs):
    targets = torch.zeros(len(images), dtype=torch.long) if targets is None else targets
    targets = targets.to(images.device)
    clean = score_fn(images, targets)
    return MetricContext(images, saliency, targets, clean, score_fn, protocol, **kwargs)


def tiny_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()


class LinearScore:
    """score(z) = mean over channels and pixels of weight * z: each step's score is exact."""

    def __init__(self, weight):
        self.weight = weight
        self.calls = []

    def __call__(self, images, targets):
        self.calls.append(len(images))
        return (images * self.weight).flatten(1).mean(dim=1)


@pytest.mark.parametrize("name", ["polycam", "rise"])
@pytest.mark.parametrize("mode", ["insertion", "deletion"])
def test_a_model_that_ignores_the_image_gives_its_constant(name, mode):
    images, saliency = torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8)

    def constant(batch, targets):
        return torch.full((len(batch),), 0.37)

    result = METRICS.get(mode).score_batch(
        context(images, saliency, constant, get_protocol(name, step=5))
    )
    torch.testing.assert_close(result.values[mode], torch.full((3,), 0.37))
    n_points = math.ceil(64 / 5) + (name == "rise")
    assert result.curves[mode].shape == (3, n_points)


def test_hand_computed_deletion_and_insertion_curves():
    images = torch.ones(1, 3, 2, 2, dtype=torch.float64)
    saliency = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]], dtype=torch.float64)
    score = LinearScore(torch.ones(3, 2, 2, dtype=torch.float64))
    rise = get_protocol("rise", step=1)
    deletion = METRICS.get("deletion").score_batch(context(images, saliency, score, rise))
    insertion = METRICS.get("insertion").score_batch(
        context(images, saliency, score, get_protocol("rise", step=1, insertion_substrate="zeros"))
    )
    assert deletion.curves["deletion"].tolist() == [[1.0, 0.75, 0.5, 0.25, 0.0]]
    assert insertion.curves["insertion"].tolist() == [[0.0, 0.25, 0.5, 0.75, 1.0]]
    assert deletion.values["deletion"].item() == 0.5
    polycam = get_protocol("polycam", step=1, deletion_substrate="zeros")
    deletion = METRICS.get("deletion").score_batch(context(images, saliency, score, polycam))
    assert deletion.curves["deletion"].tolist() == [[0.75, 0.5, 0.25, 0.0]]
    assert deletion.values["deletion"].item() == 0.375


def expected_linear_curve(image, substrate, saliency, weight, counts, mode):
    """Closed form for a linear score: start + cumulative per-pixel contributions in order."""
    start, end = (image, substrate) if mode == "deletion" else (substrate, image)
    per_pixel = ((end - start) * weight).sum(axis=0).ravel() / start.size
    order = np.argsort(-saliency.ravel(), kind="stable")
    cumulative = np.concatenate([[0.0], np.cumsum(per_pixel[order])])
    return (start * weight).mean() + cumulative[counts]


@pytest.mark.parametrize("name", ["polycam", "rise"])
@pytest.mark.parametrize("mode", ["insertion", "deletion"])
def test_a_linear_score_gives_exact_curves_and_aucs(name, mode):
    torch.manual_seed(1)
    images = torch.randn(2, 3, 15, 15, dtype=torch.float64)
    saliency = torch.rand(2, 15, 15, dtype=torch.float64)
    weight = torch.rand(3, 15, 15, dtype=torch.float64) + 0.5
    protocol = get_protocol(name, step=17)  # 225 pixels: 14 steps, the last one partial
    result = METRICS.get(mode).score_batch(context(images, saliency, LinearScore(weight), protocol))
    counts = protocol.pixel_counts(225).numpy()
    substrates = protocol.substrate(mode, images).numpy()
    expected = np.stack(
        [
            expected_linear_curve(x, s, m, weight.numpy(), counts, mode)
            for x, s, m in zip(images.numpy(), substrates, saliency.numpy(), strict=True)
        ]
    )
    torch.testing.assert_close(result.curves[mode], torch.from_numpy(expected))
    if protocol.auc == "mean":
        auc = expected.sum(axis=1) / 14
    else:
        auc = (expected.sum(axis=1) - expected[:, 0] / 2 - expected[:, -1] / 2) / 14
    torch.testing.assert_close(result.values[mode], torch.from_numpy(auc))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["polycam", "rise"])
def test_chunked_equals_unchunked(device, name):
    net = tiny_net().to(device)
    images = torch.randn(2, 3, 12, 12, device=device)
    saliency = torch.rand(2, 12, 12, device=device)
    protocol = get_protocol(name, step=20)  # 8 steps, the last one partial
    results = {}
    for chunk_size in (1, 7, 10_000):
        ctx = context(images, saliency, score_function(net), protocol, chunk_size=chunk_size)
        metrics = [entry.obj for entry in METRICS if not entry.obj.needs_boxes]
        results[chunk_size] = [metric.score_batch(ctx) for metric in metrics]
    for chunked in (results[1], results[7]):
        for got, want in zip(chunked, results[10_000], strict=True):
            for key, value in want.values.items():
                torch.testing.assert_close(got.values[key], value, atol=1e-6, rtol=0)
                assert got.values[key].device == images.device
            for key, value in want.curves.items():
                torch.testing.assert_close(got.curves[key], value, atol=1e-6, rtol=0)


def test_no_score_call_sees_more_than_the_chunk_size():
    images, saliency = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    score = LinearScore(torch.ones(3, 8, 8))
    ctx = context(images, saliency, score, get_protocol("rise", step=4), chunk_size=5)
    score.calls.clear()
    METRICS.get("deletion").score_batch(ctx)
    assert max(score.calls) <= 5
    assert sum(score.calls) == 2 * 17


def test_metrics_share_curves_and_forwards_within_a_batch():
    images, saliency = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    score = LinearScore(torch.rand(3, 8, 8))
    ctx = context(images, saliency, score, get_protocol("polycam", step=8))
    score.calls.clear()
    results = {name: METRICS.get(name).score_batch(ctx) for name in FAITHFULNESS}
    assert sum(score.calls) == 2 * 8 * 2 + 2  # two curves of 8 points, one explanation forward
    torch.testing.assert_close(
        results["ins_del"].values["ins_del"],
        results["insertion"].values["insertion"] - results["deletion"].values["deletion"],
    )
    assert results["ins_del"].curves["deletion"] is results["deletion"].curves["deletion"]
    assert results["ins_del"].values["ins_del"].shape == (2,)


def test_ins_del_alone_computes_and_carries_both_curves():
    images, saliency = torch.randn(2, 3, 8, 8), torch.rand(2, 8, 8)
    score = LinearScore(torch.rand(3, 8, 8))
    ctx = context(images, saliency, score, get_protocol("polycam", step=8))
    result = METRICS.get("ins_del").score_batch(ctx)
    assert set(result.curves) == {"insertion", "deletion"}
    insertion = METRICS.get("insertion").score_batch(ctx).values["insertion"]
    deletion = METRICS.get("deletion").score_batch(ctx).values["deletion"]
    torch.testing.assert_close(result.values["ins_del"], insertion - deletion)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_nonfinite_map_is_flagged_and_leaves_the_others_alone(bad):
    net = tiny_net()
    images, saliency = torch.randn(3, 3, 8, 8), torch.rand(3, 8, 8)
    saliency[1, 2, 3] = bad
    protocol = get_protocol("rise", step=8)
    result = METRICS.get("deletion").score_batch(
        context(images, saliency, score_function(net), protocol)
    )
    assert result.flags["nonfinite_map"].tolist() == [False, True, False]
    assert torch.isnan(result.values["deletion"][1])
    assert torch.isnan(result.curves["deletion"][1]).all()
    assert torch.isfinite(result.values["deletion"][[0, 2]]).all()
    alone = METRICS.get("deletion").score_batch(
        context(images[[0, 2]], saliency[[0, 2]], score_function(net), protocol)
    )
    torch.testing.assert_close(result.values["deletion"][[0, 2]], alone.values["deletion"])


def test_a_batch_of_only_nonfinite_maps_gives_nan_curves_of_the_right_length():
    images, saliency = torch.randn(2, 3, 8, 8), torch.full((2, 8, 8), float("nan"))
    result = METRICS.get("insertion").score_batch(
        context(images, saliency, LinearScore(1.0), get_protocol("rise", step=8))
    )
    assert result.curves["insertion"].shape == (2, 9)
    assert torch.isnan(result.values["insertion"]).all()


def test_ties_are_broken_by_pixel_index():
    ranks, ties = pixel_ranks(torch.tensor([[[1.0, 2.0, 2.0], [0.0, 2.0, 1.0]]]))
    assert ranks.tolist() == [[3, 0, 1, 5, 2, 4]]
    assert ties.tolist() == [pytest.approx(5 / 6)]
    _, ties = pixel_ranks(torch.stack([torch.rand(4, 4), torch.ones(4, 4)]))
    assert ties.tolist() == [0.0, 1.0]


def test_signed_zeros_tie_as_one_value_whatever_order_the_sort_gives_them(monkeypatch):
    signed = torch.tensor([[[0.0, -0.0, 1.0], [-0.0, 0.0, -0.0]]])
    expected = pixel_ranks(signed.abs())
    real_sort = torch.Tensor.sort

    def sort_as_cuda_does(values, *args, **kwargs):  # -0.0 below +0.0, as CUDA's sort orders them
        key = torch.where((values == 0) & values.signbit(), torch.tensor(-1e-30), values)
        order = real_sort(key, *args, **kwargs).indices
        return values.gather(1, order), order

    monkeypatch.setattr(torch.Tensor, "sort", sort_as_cuda_does)
    ranks, ties = pixel_ranks(signed)
    assert torch.equal(ranks, expected[0]) and torch.equal(ties, expected[1])
    assert ranks.tolist() == [[1, 2, 0, 3, 4, 5]]  # the zeros by pixel index


def test_tied_maps_evaluate_like_their_index_ordered_equivalent():
    net = tiny_net()
    images = torch.randn(2, 3, 8, 8)
    tied = torch.stack([torch.ones(8, 8), (torch.rand(8, 8) * 3).floor()])
    by_index = torch.arange(64, 0, -1, dtype=torch.float32).view(8, 8)
    untied = tied * 1000 + by_index  # same order, ties broken by pixel index
    protocol = get_protocol("polycam", step=8)
    first, second, reference = (
        METRICS.get("deletion").score_batch(context(images, maps, score_function(net), protocol))
        for maps in (tied, tied.clone(), untied)
    )
    assert torch.equal(first.curves["deletion"], second.curves["deletion"])
    torch.testing.assert_close(first.curves["deletion"], reference.curves["deletion"])
    assert first.diagnostics["tie_fraction"][0] == 1.0
    assert reference.diagnostics["tie_fraction"].tolist() == [0.0, 0.0]


def test_saliency_at_input_size_is_bilinear_without_corner_alignment():
    maps = torch.tensor([[[0.0, 1.0]]], dtype=torch.float16)
    resized = saliency_at_input_size(maps, (1, 4))
    assert resized.dtype == torch.float32
    assert resized.tolist() == [[[0.0, 0.25, 0.75, 1.0]]]
    same = torch.rand(2, 5, 5)
    assert saliency_at_input_size(same, (5, 5)) is same
    assert saliency_at_input_size(torch.rand(2, 7, 7), (32, 24)).shape == (2, 32, 24)


def test_context_checks_shapes_and_picks_a_default_chunk_size():
    images = torch.randn(2, 3, 8, 8)
    ctx = context(images, torch.rand(2, 8, 8), LinearScore(1.0), get_protocol("rise"))
    assert ctx.chunk_size == 16
    with pytest.raises(ValueError, match="saliency"):
        context(images, torch.rand(2, 7, 7), LinearScore(1.0), get_protocol("rise"))


def test_apply_in_chunks_concatenates_and_validates():
    values, offsets = torch.arange(10.0), torch.arange(10.0) * 10

    def add(a, b):
        return torch.stack([a + b, a - b], dim=1)

    whole = add(values, offsets)
    for chunk_size in (1, 3, 10, 11):
        assert torch.equal(apply_in_chunks(add, values, offsets, chunk_size=chunk_size), whole)
    assert apply_in_chunks(add, values[:0], offsets[:0], chunk_size=4).shape == (0, 2)
    with pytest.raises(ConfigError, match="chunk_size"):
        apply_in_chunks(add, values, offsets, chunk_size=0)
    with pytest.raises(ValueError, match="leading lengths"):
        apply_in_chunks(add, values, offsets[:3], chunk_size=2)


def test_registry_lists_every_metric_with_its_direction():
    assert METRICS.names()[:5] == FAITHFULNESS
    better = {name: METRICS.get(name).higher_is_better for name in METRICS.names()}
    assert better == {
        "insertion": True,
        "deletion": False,
        "ins_del": True,
        "avg_drop": False,
        "increase": True,
        "pointing_game": True,
        "energy_pointing": True,
        "road_morf": False,
        "road_lerf": True,
    }
