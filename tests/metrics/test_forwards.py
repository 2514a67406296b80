"""`Metric.forwards` against the forwards the metrics run: every registered metric, alone and
together, counted through the score function they call."""

import itertools

import pytest
import torch

from xaibench.metrics import METRICS, get_protocol
from xaibench.metrics.base import MetricContext, evaluation_forwards

SIDE = 12


class CountingScore:
    """A score function of a fixed linear model that counts the images it scores."""

    def __init__(self):
        torch.manual_seed(0)
        self.weights = torch.randn(3, SIDE, SIDE)
        self.images = 0

    def __call__(self, images, targets):
        self.images += len(images)
        return (images * self.weights).flatten(1).sum(1) + targets.to(images.dtype)


def counted_forwards(names, protocol, batch=3):
    """Model forwards per image that scoring `names` together runs, the clean forward included."""
    torch.manual_seed(1)
    images = torch.rand(batch, 3, SIDE, SIDE)
    saliency = torch.rand(batch, SIDE, SIDE)
    targets = torch.zeros(batch, dtype=torch.long)
    boxes = torch.tensor([[[0, 0, SIDE // 2, SIDE // 2]]] * batch, dtype=torch.float32)
    score = CountingScore()
    clean = score(images, targets)
    ctx = MetricContext(images, saliency, targets, clean, score, protocol, boxes=boxes)
    for name in names:
        METRICS.get(name).score_batch(ctx)
    return score.images / batch


PROTOCOLS = {
    "polycam": get_protocol("polycam", step=20),
    "rise": get_protocol("rise", step=7, road_percentages=(25, 50)),
}


@pytest.mark.parametrize("protocol", PROTOCOLS.values(), ids=PROTOCOLS)
@pytest.mark.parametrize("name", METRICS.names())
def test_each_metric_declares_the_forwards_it_runs(name, protocol):
    declared = evaluation_forwards([METRICS.get(name)], protocol, SIDE * SIDE)
    assert declared == counted_forwards([name], protocol)


@pytest.mark.parametrize("names", list(itertools.combinations(METRICS.names(), 3))[::7])
def test_shared_work_is_counted_once(names):
    protocol = PROTOCOLS["rise"]
    declared = evaluation_forwards([METRICS.get(n) for n in names], protocol, SIDE * SIDE)
    assert declared == counted_forwards(names, protocol)


def test_the_default_metrics_share_their_curves():
    protocol = get_protocol("polycam")
    metrics = [METRICS.get(n) for n in ("insertion", "deletion", "ins_del", "avg_drop")]
    # 224 x 224 pixels in steps of 224: 224 points per curve, two curves, one masked image, clean
    assert evaluation_forwards(metrics, protocol, 224 * 224) == 224 + 224 + 1 + 1
