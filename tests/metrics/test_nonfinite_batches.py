"""A batch in which no map is finite gives NaN values and the non-finite flag for every image, for
every native metric and protocol, never an error about empty tensors."""

import pytest
import torch
from torch import nn

from xaibench.core.choices import PROTOCOL_SETTINGS
from xaibench.metrics import METRICS, MetricContext, get_protocol, score_function
from xaibench.metrics.base import fill_rows

NATIVE = [name for name in METRICS.names() if not name.startswith("quantus.")]


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    ).eval()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("protocol", sorted(PROTOCOL_SETTINGS))
@pytest.mark.parametrize("name", NATIVE)
def test_a_batch_without_a_finite_map_gives_nan_and_flags(name, protocol, bad):
    net = tiny_net()
    score_fn = score_function(net)
    images, targets = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0]]]).expand(3, 1, 4).contiguous()
    context = MetricContext(
        images,
        torch.full((3, 16, 16), bad),
        targets,
        score_fn(images, targets),
        score_fn,
        get_protocol(protocol, step=64),
        boxes=boxes,
        pixel_std=(0.229, 0.224, 0.225),
        model=net,
    )
    result = METRICS.get(name).score_batch(context)
    assert result.values[name].shape == (3,) and torch.isnan(result.values[name]).all()
    assert result.flags["nonfinite_map"].tolist() == [True] * 3
    for curve in result.curves.values():
        assert curve.shape[0] == 3 and torch.isnan(curve).all()


def test_fill_rows_of_no_kept_image_is_all_fill():
    keep = torch.zeros(4, dtype=torch.bool)
    out = fill_rows(keep, torch.empty(0, 5))
    assert out.shape == (4, 5) and torch.isnan(out).all()
    assert fill_rows(keep, torch.empty(0), fill=0.0).tolist() == [0.0] * 4
