"""Randomisation stages (sanity/stages.py): their order, granularity and cumulative randomisation."""

import copy
from collections import OrderedDict

import torch
from torch import nn

from xaibench.sanity import randomisation_stages, randomise
from xaibench.sanity.stages import Stage


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


def test_weights_are_those_of_a_reset_under_the_seeded_cpu_generator():
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 2))
    expected = copy.deepcopy(model)
    with torch.random.fork_rng():
        torch.manual_seed(5 * 1_000_003 + 2)
        expected[1].reset_parameters()
    state = torch.random.get_rng_state()
    randomise(model, Stage("1", ("1",)), seed=5, index=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    for got, want in zip(model.parameters(), expected.parameters(), strict=True):
        assert torch.equal(got, want)


class Elsewhere(nn.Linear):
    """A Linear on the meta device standing for one on a GPU: `to` moves it through values kept
    on the CPU, and `reset_parameters` notes where its weight lives when it runs."""

    def __init__(self):
        super().__init__(6, 4, device="meta")
        self.kept = {name: torch.zeros(p.shape) for name, p in self.named_parameters()}
        self.moves, self.reset_on = [], []

    def to(self, device):
        self.moves.append(torch.device(device).type)
        for name, parameter in self.named_parameters():
            if self.moves[-1] == "cpu":
                moved = self.kept[name].clone()
            else:
                self.kept[name] = parameter.detach().clone()
                moved = torch.empty_like(parameter, device="meta")
            torch.utils.swap_tensors(parameter, nn.Parameter(moved, parameter.requires_grad))
        return self

    def reset_parameters(self):
        if hasattr(self, "reset_on"):
            self.reset_on.append(self.weight.device.type)
        super().reset_parameters()


def test_a_module_off_the_cpu_is_reset_on_the_cpu_and_moved_back():
    elsewhere, here = Elsewhere(), nn.Linear(6, 4)
    weight = elsewhere.weight
    randomise(nn.Sequential(elsewhere), Stage("0", ("0",)), seed=1, index=0)
    randomise(nn.Sequential(here), Stage("0", ("0",)), seed=1, index=0)
    assert elsewhere.moves == ["cpu", "meta"] and elsewhere.reset_on == ["cpu"]
    assert elsewhere.weight is weight and elsewhere.weight.is_meta
    assert torch.equal(elsewhere.kept["weight"], here.weight)
    assert torch.equal(elsewhere.kept["bias"], here.bias)
