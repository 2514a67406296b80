"""MC dropout: non-zero variance, seeded, exact at p = 0, functional dropout found, no dropout refused."""

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.metrics.mc_dropout import (
    MCDropout,
    _DropoutFromCPU,
    dropout_active,
    find_dropout,
    mc_dropout_probabilities,
)


class Head(nn.Module):
    """conv + BN + pool, then dropout (a module or a functional call) and a 10-way linear."""

    def __init__(self, p: float = 0.5, functional: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU())
        self.drop = None if functional else nn.Dropout(p)
        self.p, self.functional = p, functional
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.features(x).mean(dim=(2, 3))
        x = F.dropout(x, self.p, training=self.training) if self.functional else self.drop(x)
        return self.fc(x)


@pytest.fixture
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


TARGETS = torch.tensor([0, 4, 9])


def samples(model, images, passes=20, chunk_size=16, seed=0):
    sites = find_dropout(model, (32, 32))
    return mc_dropout_probabilities(
        model, images, TARGETS, sites, passes=passes, chunk_size=chunk_size, seed=seed
    )


def test_variance_is_positive_and_values_are_reproducible_with_a_seed(images):
    model = Head().eval()
    a = samples(model, images)
    assert a.shape == (20, 3)
    assert (a.var(dim=0) > 0).all()
    torch.testing.assert_close(samples(model, images), a, rtol=0, atol=0)
    assert not torch.equal(samples(model, images, seed=1), a)
    # the caller's random state is untouched and the model is back in eval mode
    state = torch.random.get_rng_state()
    samples(model, images)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not any(m.training for m in model.modules())


def test_samples_are_the_probabilities_of_explicitly_masked_forwards(images):
    """Reference: pass k of image b applies the mask nn.Dropout drew for row k * B + b."""
    model = Head(p=0.5).eval()
    got = samples(model, images, passes=4, chunk_size=12)
    torch.manual_seed(0)
    pooled = model.features(images).mean(dim=(2, 3)).repeat(4, 1)
    masks = torch.empty_like(pooled).bernoulli_(0.5) / 0.5
    probabilities = model.fc(pooled * masks).softmax(dim=1)
    expected = probabilities.gather(1, TARGETS.repeat(4)[:, None]).view(4, 3)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_p_zero_gives_the_deterministic_probability_and_zero_variance(images, caplog):
    model = Head(p=0.0).eval()
    with caplog.at_level(logging.WARNING):
        scorer = MCDropout(model, 5, input_size=(32, 32))
    assert "p=0" in caplog.text
    got = samples(model, images, passes=5)
    expected = model(images).softmax(dim=1).gather(1, TARGETS[:, None]).squeeze(1)
    torch.testing.assert_close(got, expected.expand(5, 3), rtol=1e-6, atol=1e-7)
    assert scorer.sites[0].p == 0


def test_chunking_only_changes_how_many_images_go_per_forward(images):
    model = Head(p=0.0).eval()
    torch.testing.assert_close(
        samples(model, images, passes=7, chunk_size=1),
        samples(model, images, passes=7, chunk_size=64),
    )


def test_functional_dropout_guarded_by_self_training_is_found_and_activated(images):
    model = Head(functional=True).eval()
    sites = find_dropout(model, (32, 32))
    assert [(s.name, s.kind, s.p) for s in sites] == [("", "functional", 0.5)]
    with dropout_active(model, sites):
        assert model.training and not model.features[1].training  # BN stays in eval mode
    assert (samples(model, images).var(dim=0) > 0).all()
    assert not model.training


def test_torchvision_and_lite_models_expose_only_their_classifier_dropout():
    """Stochastic depth (torchvision's StochasticDepth, EfficientNet-Lite's drop_connect) is not
    dropout and stays off; DenseNet's functional dropout is found when drop_rate > 0."""
    from xaibench.models import load_model

    found = {
        name: [
            (s.name, s.kind, s.p) for s in find_dropout(load_model(name, "none").model, (32, 32))
        ]
        for name in ("efficientnet_lite0", "efficientnet_b0", "mobilenet_v3_small")
    }
    assert found == {
        "efficientnet_lite0": [("_dropout", "module", 0.2)],
        "efficientnet_b0": [("classifier.0", "module", 0.2)],
        "mobilenet_v3_small": [("classifier.2", "module", 0.2)],
    }
    dense = torchvision.models.DenseNet(8, (1, 1), 16, drop_rate=0.3, num_classes=10).eval()
    sites = find_dropout(dense, (32, 32))
    assert [(s.name, s.kind) for s in sites] == [
        ("features.denseblock1.denselayer1", "functional"),
        ("features.denseblock2.denselayer1", "functional"),
    ]


def test_a_model_without_dropout_is_refused_clearly():
    model = torchvision.models.DenseNet(8, (1, 1), 16, num_classes=10).eval()  # drop_rate 0
    with pytest.raises(ConfigError, match="DenseNet has no dropout"):
        MCDropout(model, 10, input_size=(32, 32))
    with pytest.raises(ConfigError, match="at least 2 passes"):
        MCDropout(Head(), 1)


def test_batch_seed_depends_on_the_first_row_not_on_earlier_batches(images):
    from xaibench.metrics import MetricContext, get_protocol

    model = Head().eval()
    scorer = MCDropout(model, 8, input_size=(32, 32))
    ctx = MetricContext(
        images=images,
        saliency=torch.zeros(3, 32, 32),
        targets=TARGETS,
        clean_scores=torch.zeros(3),
        score_fn=None,
        protocol=get_protocol("polycam"),
    )
    first = scorer.score_batch(ctx, np.array([5, 6, 7])).values
    scorer.score_batch(ctx, np.array([0, 1, 2]))
    again = scorer.score_batch(ctx, np.array([5, 6, 7])).values
    torch.testing.assert_close(first["mc_mean"], again["mc_mean"], rtol=0, atol=0)
    assert (first["mc_var"] > 0).all()


class Mixed(nn.Module):
    """Element, channel (Dropout2d, in place) and alpha dropout, modules and functional calls."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.channels = nn.Dropout2d(0.3, inplace=True)
        self.alpha = nn.AlphaDropout(0.2)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.channels(self.conv(x).contiguous(memory_format=torch.channels_last))
        x = F.dropout(x.mean(dim=(2, 3)), 0.4, training=self.training)
        return self.fc(self.alpha(x))


def plain_global_rng_samples(model, images, passes, chunk_size, seed):
    """The samples as the torch dropout kernels draw them from the global generator, no mode."""
    b = len(images)
    sites = find_dropout(model, (32, 32))

    def probabilities(rows):
        logits = model(images[rows % b])
        return logits.float().softmax(dim=1).gather(1, TARGETS[rows % b, None])[:, 0]

    with torch.no_grad(), dropout_active(model, sites), torch.random.fork_rng():
        torch.manual_seed(seed)
        flat = torch.arange(passes * b)
        return torch.cat([probabilities(r) for r in flat.split(chunk_size)]).view(passes, b)


@pytest.mark.parametrize("make", [Head, lambda: Head(functional=True), Mixed])
def test_masks_drawn_on_the_cpu_are_the_dropout_kernels_own_bit_for_bit(images, make):
    model = make().eval()
    got = samples(model, images, passes=5, chunk_size=4, seed=7)
    assert torch.equal(got, plain_global_rng_samples(model, images, 5, 4, 7))
    assert (got.var(dim=0) > 0).all()


def test_an_input_off_the_cpu_gets_its_mask_from_the_cpu_generator(monkeypatch):
    """A meta tensor stands for a GPU one: the mask is drawn on the CPU and only copied over."""
    moved = []
    to = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        moved.append(self)
        return to(self, *args, **kwargs)

    x = torch.empty(6, 5, device="meta")
    with torch.random.fork_rng():
        torch.manual_seed(3)
        expected = F.dropout(torch.ones(6, 5), 0.5, training=True)
        after = torch.random.get_rng_state()
        torch.manual_seed(3)
        monkeypatch.setattr(torch.Tensor, "to", recording_to)
        with _DropoutFromCPU():
            out = F.dropout(x, 0.5, training=True)
        monkeypatch.undo()
        assert torch.equal(torch.random.get_rng_state(), after)
    assert out.is_meta and out.shape == (6, 5)
    assert len(moved) == 1 and moved[0].device.type == "cpu"
    assert torch.equal(moved[0], expected)
