"""`SETTINGS_READ` against the metrics: a setting a metric is said not to read does not change its
values, which is what lets `compare` show such evaluations under one protocol."""

import pytest
import torch
from torch import nn

from xaibench.metrics import METRICS, get_protocol
from xaibench.metrics.base import MetricContext, score_function
from xaibench.metrics.protocols import SETTINGS, SETTINGS_READ, settings_read_by

SIDE = 12
BASE = {"step": 20}  # 8 curve points on 12 x 12 images, so the trapezoid rule applies
OTHER = {
    "step": 7,
    "insertion_substrate": "zeros",
    "deletion_substrate": "zeros",
    "include_start": True,
    "auc": "trapezoid",
    "score": "logits",
    "road_percentages": (25.0, 50.0),
    "road_noise": 0.05,
    "road_seed": 3,
    "pointing_tolerance": 2.0,
}


def values(name, **overrides):
    """(4,) the metric's values on fixed images, maps and boxes of a small linear model, scored in
    the protocol's score space as `evaluate` scores them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 5)).eval()
    images = torch.rand(4, 3, SIDE, SIDE)
    saliency = torch.rand(4, SIDE, SIDE)
    targets = torch.tensor([0, 1, 2, 3])
    boxes = torch.tensor([[[0.0, 0.0, SIDE / 2, SIDE / 2]]] * 4)
    protocol = get_protocol("polycam", **{**BASE, **overrides})
    score = score_function(model, protocol.score)
    clean = score(images, targets)
    ctx = MetricContext(images, saliency, targets, clean, score, protocol, boxes=boxes)
    return METRICS.get(name).score_batch(ctx).values[name]


def test_every_native_metric_and_setting_is_listed():
    assert set(SETTINGS_READ) == set(METRICS.names())
    assert set(OTHER) == set(SETTINGS)
    assert all(set(read) <= set(SETTINGS) for read in SETTINGS_READ.values())
    assert settings_read_by("quantus.Sparseness") == SETTINGS


@pytest.mark.parametrize("name", sorted(SETTINGS_READ))
def test_a_setting_a_metric_does_not_read_leaves_its_values_unchanged(name):
    base = values(name)
    assert torch.isfinite(base).any()
    for setting in sorted(set(SETTINGS) - set(settings_read_by(name))):
        changed = values(name, **{setting: OTHER[setting]})
        torch.testing.assert_close(changed, base, equal_nan=True, msg=f"{name}: {setting}")
