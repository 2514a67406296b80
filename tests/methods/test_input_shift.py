"""T-Grad's and FullGrad's input-shift term, against the network without its transform.

torchvision's GoogLeNet with transform_input=True feeds its layers x' = s * x + t. The same
network with the flag off, fed x' computed here from ImageNet's mean and std, has the same bias
terms; its input term <x', dy/dx'> is split by the transformed network into the input term
<x, dy/dx> = <s * x, dy/dx'> and the input-shift term <t, dy/dx'>.
"""

import copy
from dataclasses import dataclass

import pytest
import torch
import torchvision
from model_helpers import calibrated

from xaibench.core.errors import ConfigError
from xaibench.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from xaibench.methods import Explanation, FullGrad, TGrad
from xaibench.methods.fullgrad import FullGradTerms
from xaibench.methods.tgrad import TGradTerms

SCALE = (torch.tensor(IMAGENET_STD, dtype=torch.float64) / 0.5)[:, None, None]
SHIFT = ((torch.tensor(IMAGENET_MEAN, dtype=torch.float64) - 0.5) / 0.5)[:, None, None]


@dataclass
class Pair:
    """The transformed network, the same network untransformed, images x (2, 3, 64, 64), x'."""

    model: torch.nn.Module
    plain: torch.nn.Module
    images: torch.Tensor
    fed: torch.Tensor


@pytest.fixture(scope="module")
def pair() -> Pair:
    torch.manual_seed(0)
    model = torchvision.models.googlenet(
        weights=None, num_classes=10, aux_logits=False, init_weights=False, transform_input=True
    )
    model = calibrated(model, 64, seed=3).double()
    plain = copy.deepcopy(model)
    plain.transform_input = False
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)).double()
    return Pair(model, plain, images, SCALE * images + SHIFT)


@dataclass
class Runs:
    """One method on x with the transformed network and on x' with the untransformed one."""

    result: Explanation
    expected: Explanation
    terms: TGradTerms | FullGradTerms
    plain_terms: TGradTerms | FullGradTerms
    input_term: torch.Tensor
    shift_term: torch.Tensor


def run_both(pair: Pair, method_class: type) -> Runs:
    """Both runs (their term names checked) and the input terms by hand, (B, 3, H, W) each.

    s * x * dy/dx' and t * dy/dx', with dy/dx' the untransformed network's input gradient.
    """
    method, untransformed = method_class(pair.model), method_class(pair.plain)
    result = method(pair.images)
    expected = untransformed(pair.fed, result.targets)
    terms, plain_terms = result.extras["terms"], expected.extras["terms"]
    assert terms.names == ["input", "input_shift", *plain_terms.names[1:]]
    fed = pair.fed.clone().requires_grad_(True)
    score = pair.plain(fed).gather(1, result.targets[:, None]).sum()
    (grad,) = torch.autograd.grad(score, fed)
    return Runs(result, expected, terms, plain_terms, SCALE * pair.images * grad, SHIFT * grad)


def test_tgrad_gives_the_shift_a_term_like_a_bias(pair):
    runs = run_both(pair, TGrad)
    result, terms, plain_terms = runs.result, runs.terms, runs.plain_terms
    input_term, shift_term = runs.input_term, runs.shift_term
    score = result.logits.gather(1, result.targets[:, None])[:, 0]
    torch.testing.assert_close(terms.maps[1], shift_term.clamp(min=0).sum(dim=1))
    torch.testing.assert_close(terms.weights[:, 0], input_term.sum(dim=(1, 2, 3)) / score)
    torch.testing.assert_close(terms.weights[:, 1], shift_term.sum(dim=(1, 2, 3)) / score)
    torch.testing.assert_close(terms.weights[:, 2:], plain_terms.weights[:, 1:])
    assert (terms.weights[:, 1].abs() > 1e-3).all()

    def share(term_map: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Steps 5-6 for a term at the input resolution (no resizing)."""
        total = term_map.sum(dim=(1, 2))[:, None, None] + 1e-8
        return weight.clamp(min=0)[:, None, None] * term_map / total

    own = share(terms.maps[0], terms.weights[:, 0]) + share(terms.maps[1], terms.weights[:, 1])
    replaced = share(plain_terms.maps[0], plain_terms.weights[:, 0])
    torch.testing.assert_close(result.maps, (runs.expected.maps - replaced + own).float())


def normalised(term: torch.Tensor) -> torch.Tensor:
    """The reference FullGrad post-processing: |T| min-max normalised per image, channel sum."""
    magnitude = term.abs()
    low = magnitude.amin(dim=(1, 2, 3), keepdim=True)
    high = magnitude.amax(dim=(1, 2, 3), keepdim=True)
    return ((magnitude - low) / (high - low + 1e-6)).sum(dim=1)


def test_fullgrad_gives_the_shift_a_term_like_a_bias(pair):
    runs = run_both(pair, FullGrad)
    terms, input_term, shift_term = runs.terms, runs.input_term, runs.shift_term
    torch.testing.assert_close(terms.totals[:, 0], input_term.sum(dim=(1, 2, 3)))
    torch.testing.assert_close(terms.totals[:, 1], shift_term.sum(dim=(1, 2, 3)))
    torch.testing.assert_close(terms.totals[:, 2:], runs.plain_terms.totals[:, 1:])
    ones = torch.ones(2, dtype=torch.float64)
    torch.testing.assert_close(terms.completeness, ones, rtol=0, atol=1e-9)
    replaced = normalised(input_term + shift_term)
    own = normalised(input_term) + normalised(shift_term)
    torch.testing.assert_close(runs.result.maps, (runs.expected.maps - replaced + own).float())


@pytest.mark.parametrize("method", [TGrad, FullGrad])
def test_shift_term_false_leaves_the_term_out_and_is_recorded_only_where_it_matters(method, pair):
    with_shift, published = method(pair.model), method(pair.model, shift_term=False)
    names = with_shift(pair.images).extras["terms"].names
    assert names[:2] == ["input", "input_shift"]
    assert published(pair.images).extras["terms"].names == [n for n in names if n != "input_shift"]
    assert with_shift.params == {"shift_term": True}  # a store of each refuses the other's resume
    assert published.params == {"shift_term": False}
    assert method(pair.plain).params == method(pair.plain, shift_term=False).params == {}
    with pytest.raises(ConfigError, match="shift_term must be true or false"):
        method(pair.model, shift_term="no")
