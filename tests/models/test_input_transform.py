import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import GoogLeNet

from xaibench.data.preprocess import IMAGENET_MEAN, IMAGENET_STD
from xaibench.methods.support import inspect_model
from xaibench.models.input_transform import input_shift, without_input_transform

OPTIONS = {"aux_logits": False, "init_weights": False, "num_classes": 10}


def build(name: str, cls=None, **options) -> nn.Module:
    """A torchvision model on the meta device (no weights allocated)."""
    with torch.device("meta"):
        if cls is not None:
            return cls(**OPTIONS, **options)
        return torchvision.models.get_model(name, weights=None, **OPTIONS, **options)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_reads_the_transform_torchvision_applies(name):
    model = build(name, transform_input=True)
    scale, shift = input_shift(model)
    assert scale.shape == shift.shape == (3,) and scale.dtype == torch.float64
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    torch.testing.assert_close(scale, std / 0.5, rtol=0, atol=1e-15)
    torch.testing.assert_close(shift, (mean - 0.5) / 0.5, rtol=0, atol=1e-15)
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0)).double()
    expected = scale[:, None, None] * x + shift[:, None, None]
    torch.testing.assert_close(model._transform_input(x), expected, rtol=0, atol=1e-15)


def test_no_transform_is_found_where_forward_applies_none():
    assert input_shift(build("googlenet", transform_input=False)) is None
    assert input_shift(build("inception_v3", transform_input=False)) is None
    with torch.device("meta"):
        assert input_shift(torchvision.models.resnet18()) is None

    class GoogLeNetLookalike(nn.Module):  # the name and the flag, not torchvision's forward
        transform_input = True

    assert input_shift(GoogLeNetLookalike()) is None


def test_without_input_transform_restores_the_flag():
    model = build("googlenet", transform_input=True)
    with pytest.raises(RuntimeError, match="inside"), without_input_transform(model):
        assert not model.transform_input and input_shift(model) is None
        raise RuntimeError("inside")
    assert model.transform_input
    plain = build("googlenet", transform_input=False)
    with without_input_transform(plain):
        assert not plain.transform_input
    assert not plain.transform_input


def test_only_the_transform_is_accounted_for():
    class Offset(GoogLeNet):
        """A constant added after the input transform: the bias of no layer, and no transform."""

        def _forward(self, x):
            return super()._forward(x + 0.1)

    found = inspect_model(build("", Offset, transform_input=True), (64, 64))
    assert found.findings["bias_terms"].status == "approximate"
    assert "constant added" in found.findings["bias_terms"].reason
    exact = inspect_model(build("googlenet", transform_input=True), (64, 64))
    assert exact.findings["bias_terms"].status == "yes"
    assert "shift is a term of its own" in exact.findings["bias_terms"].reason
