import math

import torch

from xaibench.metrics import METRICS, MetricContext, get_protocol


def affine_score(images, targets):
    """score(z) = 1 + mean(z) / 2."""
    return 1 + images.flatten(1).mean(dim=1) / 2


def evaluate(images, saliency, score_fn=affine_score, clean=None):
    targets = torch.zeros(len(images), dtype=torch.long)
    clean = score_fn(images, targets) if clean is None else clean
    ctx = MetricContext(images, saliency, targets, clean, score_fn, get_protocol("polycam"))
    return {name: METRICS.get(name).score_batch(ctx) for name in ("avg_drop", "increase")}


def test_hand_computed_drop_and_increase():
    images = torch.stack([torch.ones(3, 2, 2), -torch.ones(3, 2, 2)]).double()
    # min-max scaling maps both to [[0, 1], [1, 1]]: E keeps 3/4 of the image
    saliency = torch.tensor([[[0.0, 1.0], [1.0, 1.0]], [[2.0, 6.0], [6.0, 6.0]]]).double()
    results = evaluate(images, saliency)
    # image 0: Y = 1.5, O = 1.375; image 1: Y = 0.5, O = 0.625
    torch.testing.assert_close(
        results["avg_drop"].values["avg_drop"], torch.tensor([0.125 / 1.5, 0.0]).double()
    )
    assert results["increase"].values["increase"].tolist() == [0.0, 1.0]
    assert METRICS.get("avg_drop").summary_scale == METRICS.get("increase").summary_scale == 100


def test_constant_and_nonfinite_maps_are_flagged_not_divided_by_zero():
    images = torch.randn(3, 3, 4, 4)
    saliency = torch.rand(3, 4, 4)
    saliency[0] = 0.25
    saliency[2, 1, 1] = float("nan")
    results = evaluate(images, saliency)
    for name, result in results.items():
        values = result.values[name]
        assert math.isnan(values[0]) and math.isnan(values[2]) and not math.isnan(values[1])
        assert result.flags["constant_map"].tolist() == [True, False, False]
        assert result.flags["nonfinite_map"].tolist() == [False, False, True]
    drop_alone = evaluate(images[1:2], saliency[1:2])["avg_drop"].values["avg_drop"]
    torch.testing.assert_close(results["avg_drop"].values["avg_drop"][1:2], drop_alone)


def test_a_nonpositive_clean_logit_leaves_the_relative_drop_undefined():
    images, saliency = torch.randn(2, 3, 4, 4), torch.rand(2, 4, 4)
    results = evaluate(images, saliency, clean=torch.tensor([-1.0, 2.0]))
    drop = results["avg_drop"]
    assert drop.flags["nonpositive_clean_score"].tolist() == [True, False]
    assert math.isnan(drop.values["avg_drop"][0]) and not math.isnan(drop.values["avg_drop"][1])
    assert not torch.isnan(results["increase"].values["increase"]).any()


def test_per_image_values_are_fractions():
    torch.manual_seed(0)
    images, saliency = torch.randn(16, 3, 4, 4), torch.randn(16, 4, 4)
    results = evaluate(images, saliency)
    drop = results["avg_drop"].values["avg_drop"]
    assert ((drop >= 0) & (drop <= 1)).all()
    assert set(results["increase"].values["increase"].tolist()) <= {0.0, 1.0}
