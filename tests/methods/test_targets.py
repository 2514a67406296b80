"""The explained score: one definition, and each method's declaration of the score it explains."""

import pytest
import torch

from xaibench.core.errors import ConfigError
from xaibench.methods import METHODS, Gradient
from xaibench.methods.targets import explained_score

PROBABILITY = {"rise", "scorecam", "polycam", "polycam_minus", "polycam_pm", "occlusion"}
"""The methods whose paper weights by the softmax probability of the class, or maps it
(Occlusion)."""


def test_logit_and_probability_of_each_rows_class():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    targets = torch.tensor([2, 0], dtype=torch.int32)
    assert torch.equal(explained_score(logits, targets), torch.tensor([3.0, 0.5]))
    probability = explained_score(logits, targets, "probability")
    expected = torch.stack([logits[0].softmax(0)[2], logits[1].softmax(0)[0]])
    torch.testing.assert_close(probability, expected, rtol=0, atol=0)


def test_an_unknown_kind_is_refused():
    with pytest.raises(ConfigError, match="logit"):
        explained_score(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), "logits")


def test_methods_explain_the_logit_unless_their_paper_says_probability():
    declared = {e.name for e in METHODS if e.obj.explains == "probability"}
    assert declared == PROBABILITY
    assert all(e.obj.explains == "logit" for e in METHODS if e.name not in PROBABILITY)


def test_the_declared_score_is_the_one_differentiated(small_vgg, images):
    class ProbabilityGradient(Gradient):
        explains = "probability"

    targets = torch.tensor([1, 2, 3, 4])
    x = images.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(
        small_vgg(x).softmax(dim=1).gather(1, targets[:, None]).sum(), x
    )
    got = ProbabilityGradient(small_vgg)(images, targets).maps
    torch.testing.assert_close(got, expected.abs().amax(dim=1))
    logit = Gradient(small_vgg)(images, targets).maps
    assert not torch.allclose(got, logit)
