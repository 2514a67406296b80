"""T-Grad on every CNN family torchvision ships, and the completeness of its decomposition.

On a network built only from linear pieces the input term plus every bias term, Linear biases
included, is the class score exactly. T-Grad's terms leave the Linear biases out (as published);
the test adds them, computed here with autograd, and compares with the score of a plain forward.
Whether the sum is exact must agree with the structural verdict of `xaibench.methods.support`.
"""

from dataclasses import dataclass

import pytest
import torch
import torchvision
from model_helpers import calibrated, hooks_left, set_inplace
from torch import nn

from xaibench.methods import Explanation, TGrad
from xaibench.methods.support import inspect_model, support_by_name

# (registered name, input side, constructor options, expected verdict). The options only make
# construction cheap (no auxiliary heads, no scipy initialisation); GoogLeNet and Inception v3
# with transform_input=True are the structures torchvision builds with pretrained weights: T-Grad's
# "input_shift" term takes the shift of their input transform, so their terms add up too.
FAMILIES = [
    ("vgg11_bn", 64, {}, "yes"),
    ("resnet18", 64, {}, "yes"),
    ("wide_resnet50_2", 64, {}, "yes"),
    ("densenet121", 64, {}, "yes"),
    ("mobilenet_v2", 64, {}, "approximate"),
    ("mobilenet_v3_small", 64, {}, "approximate"),
    ("efficientnet_b0", 64, {}, "approximate"),
    ("regnet_x_400mf", 64, {}, "yes"),
    ("regnet_y_400mf", 64, {}, "approximate"),
    ("shufflenet_v2_x0_5", 64, {}, "yes"),
    ("mnasnet0_5", 64, {}, "yes"),
    ("googlenet", 64, {"aux_logits": False, "init_weights": False}, "yes"),
    ("googlenet", 64, {"aux_logits": False, "init_weights": False, "transform_input": True}, "yes"),
    ("inception_v3", 75, {"aux_logits": False, "init_weights": False}, "yes"),
    (
        "inception_v3",
        75,
        {"aux_logits": False, "init_weights": False, "transform_input": True},
        "yes",
    ),
]
IDS = [
    f"{name}{'-transform_input' if 'transform_input' in kw else ''}" for name, _, kw, _ in FAMILIES
]


@dataclass
class FamilyRun:
    """One family's model, its two images (2, 3, side, side), and one T-Grad call on them."""

    name: str
    model: nn.Module
    images: torch.Tensor
    verdict: str
    result: Explanation


@pytest.fixture(scope="module", params=FAMILIES, ids=IDS)
def family(request) -> FamilyRun:
    name, side, options, verdict = request.param
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10, **options)
    model = calibrated(model, side, seed=1)
    images = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(2))
    return FamilyRun(name, model, images, verdict, TGrad(model)(images))


def score_and_linear_terms(model: nn.Module, images: torch.Tensor, targets: torch.Tensor):
    """(B,) the scores of a plain forward and (B,) sum over Linear layers of <b, dy_c/dz>.

    z is each Linear layer's output; the ReLUs are made out-of-place for the duration, so that
    the gradient taken at z is the gradient of z itself.
    """
    outputs = []
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m.bias is not None]
    handles = [m.register_forward_hook(lambda m, i, o: outputs.append((m, o))) for m in linears]
    set_inplace(model, False)
    try:
        x = images.clone().requires_grad_(True)
        score = model(x).gather(1, targets[:, None])[:, 0]
        grads = torch.autograd.grad(score.sum(), [z for _, z in outputs])
    finally:
        set_inplace(model, True)
        for handle in handles:
            handle.remove()
    terms = sum((m.bias * g).sum(dim=1) for (m, _), g in zip(outputs, grads, strict=True))
    return score.detach(), terms.detach()


def test_runs_on_the_family(family):
    model, images, result = family.model, family.images, family.result
    names = result.extras["terms"].names
    assert result.maps.shape == (2, *images.shape[2:])
    assert result.maps.dtype == torch.float32 and torch.isfinite(result.maps).all()
    assert (result.maps > 0).any()
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert norms and norms <= set(names)
    shifted = getattr(model, "transform_input", False)
    assert names[: 1 + shifted] == ["input", "input_shift"][: 1 + shifted]
    assert ("input_shift" in names) == shifted
    assert hooks_left(model) == [] and not model.training


def test_completeness_agrees_with_the_support_verdict(family):
    model, images, result = family.model, family.images, family.result
    side = images.shape[-1]
    verdict = inspect_model(model, (side, side)).findings["bias_terms"].status
    assert verdict == family.verdict
    score, linear_terms = score_and_linear_terms(model, images, result.targets)
    terms = result.extras["terms"].weights * result.logits.gather(1, result.targets[:, None])
    error = (terms.sum(dim=1) + linear_terms - score).abs() / score.abs()
    if verdict == "yes":
        assert error.max() < 1e-4, f"{family.name}: {error.tolist()}"
    else:
        assert error.min() > 0.05, f"{family.name}: {error.tolist()}"


@pytest.mark.parametrize("name", sorted({name for name, *_ in FAMILIES}))
def test_the_architecture_on_the_meta_device_gets_the_same_verdict(name):
    expected = {n: v for n, _, kw, v in FAMILIES if "transform_input" not in kw}[name]
    assert support_by_name(name).findings["bias_terms"].status == expected


TRANSFORMED = [family for family in FAMILIES if "transform_input" in family[2]]
TRANSFORMED_IDS = [f"{name}-transform_input" for name, *_ in TRANSFORMED]


@pytest.mark.parametrize(("name", "side", "options", "verdict"), TRANSFORMED, ids=TRANSFORMED_IDS)
def test_a_transformed_input_gets_the_same_verdict_on_the_meta_device(name, side, options, verdict):
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None, num_classes=10, **options)
    found = inspect_model(model, (side, side)).findings["bias_terms"]
    assert found.status == verdict == support_by_name(name).findings["bias_terms"].status
    assert "shift is a term of its own" in found.reason
    assert model.transform_input
