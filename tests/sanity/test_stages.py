"""Randomisation stages (sanity/stages.py): their order, granularity and cumulative randomisation."""

import copy
from collections import OrderedDict

import torch
from torch import nn

from xaibench.sanity import randomisation_stages, randomise


def blocks_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
            body=nn.Sequential(nn.Conv2d(4, 4, 3), nn.ReLU()),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            head=nn.Linear(4, 10),
        )
    ).eval()


def test_stages_follow_the_forward_pass_backwards_at_either_granularity():
    model = blocks_model()
    modules = randomisation_stages(model, (16, 16))
    assert [s.name for s in modules] == ["head", "body.0", "stem.1", "stem.0"]
    blocks = randomisation_stages(model, (16, 16), depth=1)
    assert [(s.name, s.modules) for s in blocks] == [
        ("head", ("head",)),
        ("body", ("body.0",)),
        ("stem", ("stem.0", "stem.1")),
    ]


def test_randomisation_is_cumulative_and_reproducible():
    model = blocks_model()
    stages = randomisation_stages(model, (16, 16))
    runs = []
    for _ in range(2):
        copy_ = copy.deepcopy(model)
        states = []
        for index, stage in enumerate(stages, 1):
            randomise(copy_, stage, seed=3, index=index)
            states.append({k: v.clone() for k, v in copy_.state_dict().items()})
        runs.append(states)
    original = model.state_dict()
    for first, second in zip(*runs, strict=True):
        assert all(torch.equal(first[k], second[k]) for k in first)  # same seed, same weights
    after_two = runs[0][1]  # head and body.0 randomised, the stem untouched
    assert not torch.equal(after_two["head.weight"], original["head.weight"])
    assert not torch.equal(after_two["body.0.weight"], original["body.0.weight"])
    assert torch.equal(after_two["stem.0.weight"], original["stem.0.weight"])
    assert torch.equal(runs[0][2]["head.weight"], after_two["head.weight"])  # kept, not redrawn
    other = copy.deepcopy(model)
    randomise(other, stages[0], seed=4, index=1)
    assert not torch.equal(other.state_dict()["head.weight"], runs[0][0]["head.weight"])
