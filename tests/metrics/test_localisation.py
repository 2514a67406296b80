"""Pointing game and energy-based pointing game on synthetic maps and boxes with exact answers."""

import numpy as np
import pytest
import torch

from xaibench.core.errors import ConfigError
from xaibench.metrics import METRICS, MetricContext, get_protocol

NAN_BOX = [float("nan")] * 4


def context(saliency, boxes, **protocol):
    b = len(saliency)
    images = torch.zeros(b, 3, *saliency.shape[-2:])
    zeros = torch.zeros(b)
    score = lambda x, t: torch.zeros(len(x))  # noqa: E731 (the localisation metrics run no model)
    boxes = None if boxes is None else torch.tensor(boxes, dtype=torch.float32)
    return MetricContext(
        images,
        saliency,
        zeros.long(),
        zeros,
        score,
        get_protocol("polycam", **protocol),
        boxes=boxes,
    )


def peak(row, col, size=32):
    saliency = torch.zeros(size, size)
    saliency[row, col] = 1.0
    return saliency


def test_pointing_game_hits_within_the_tolerance_only():
    """Box [8, 16] x [8, 16]: a peak at row 4 is 3.5 px above it (centre 4.5), one at (30, 30)
    is 14.5 * sqrt(2) = 20.5 px away."""
    saliency = torch.stack([peak(10, 10), peak(4, 12), peak(30, 30), peak(30, 30)])
    boxes = [[[8, 8, 16, 16], NAN_BOX]] * 3 + [[[8, 8, 16, 16], [28, 28, 31, 31]]]
    values = METRICS.get("pointing_game").score_batch(context(saliency, boxes)).values
    assert values["pointing_game"].tolist() == [1, 1, 0, 1]
    strict = METRICS.get("pointing_game").score_batch(
        context(saliency, boxes, pointing_tolerance=0)
    )
    assert strict.values["pointing_game"].tolist() == [1, 0, 0, 1]


def test_tied_maxima_count_as_the_share_that_hits():
    """A constant map: every pixel is a maximum; the value is the share of pixels whose centre
    lies within 15 px of the box, counted here pixel by pixel."""
    box = (8, 8, 16, 16)
    centres = np.arange(32) + 0.5
    dx = np.maximum.reduce([box[0] - centres, centres - box[2], np.zeros(32)])
    dy = np.maximum.reduce([box[1] - centres, centres - box[3], np.zeros(32)])
    share = ((dy[:, None] ** 2 + dx[None, :] ** 2) <= 15**2).mean()
    result = METRICS.get("pointing_game").score_batch(
        context(torch.full((1, 32, 32), 0.3), [[list(box)]])
    )
    assert result.values["pointing_game"].item() == pytest.approx(share, abs=1e-6)
    two_peaks = (peak(10, 10) + peak(31, 0))[None]
    half = METRICS.get("pointing_game").score_batch(context(two_peaks, [[list(box)]]))
    assert half.values["pointing_game"].item() == 0.5


def test_energy_pointing_game_is_the_positive_share_inside_the_boxes():
    saliency = torch.ones(1, 32, 32)
    saliency[0, 8:16, 8:16] = 2.0  # the box [8, 16] x [8, 16]: pixels 8..15
    saliency[0, 20:, 20:] = -5.0  # negative saliency does not count
    positive_total = 64 * 2 + (1024 - 64 - 144) * 1
    result = METRICS.get("energy_pointing").score_batch(context(saliency, [[[8, 8, 16, 16]]]))
    assert result.values["energy_pointing"].item() == pytest.approx(128 / positive_total)
    union = METRICS.get("energy_pointing").score_batch(
        context(saliency, [[[8, 8, 16, 16], [8, 8, 12, 16]]])
    )
    assert union.values["energy_pointing"].item() == pytest.approx(128 / positive_total)


def test_images_without_a_box_or_positive_saliency_get_nan_and_a_flag():
    saliency = torch.stack([peak(3, 3), -torch.ones(32, 32)])
    boxes = [[NAN_BOX], [[0, 0, 32, 32]]]
    pointing = METRICS.get("pointing_game").score_batch(context(saliency, boxes))
    energy = METRICS.get("energy_pointing").score_batch(context(saliency, boxes))
    assert torch.isnan(pointing.values["pointing_game"][0])
    assert pointing.flags["no_box"].tolist() == [True, False]
    assert torch.isnan(energy.values["energy_pointing"]).all()
    assert energy.flags["no_positive_saliency"].tolist() == [False, True]


def test_localisation_needs_boxes():
    with pytest.raises(ConfigError, match="pointing_game needs bounding boxes; pass `boxes`"):
        METRICS.get("pointing_game").score_batch(context(torch.rand(1, 8, 8), None))
