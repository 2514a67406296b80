"""Vanilla gradient, gradient x input, guided backprop, DeconvNet, Guided Grad-CAM."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods.base import METHODS
from xaibench.methods.cam import GradCAM
from xaibench.methods.gradients import (
    DeconvNet,
    Gradient,
    GradientInput,
    GuidedBackprop,
    GuidedGradCAM,
    rectified_relus,
)

NAMES = ["gradient", "gradinput", "guidedbackprop", "deconvnet", "guidedgradcam"]


def pearson(a, b):
    """Per-image Pearson correlation of (B, H, W) maps."""
    return [
        float(np.corrcoef(x.detach().flatten().numpy(), y.detach().flatten().numpy())[0, 1])
        for x, y in zip(a, b, strict=True)
    ]


def max_abs(values):
    return values.detach().abs().amax(dim=1)


def captum_maps(name, model, layer, images, targets):
    """Captum's attribution of the same method, reduced over channels as ours is."""
    return _captum_maps(name, model, layer, images, targets).detach()


def _captum_maps(name, model, layer, images, targets):
    attr = pytest.importorskip("captum.attr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum warns that it sets requires_grad on the input
        if name == "gradient":
            return attr.Saliency(model).attribute(images, target=targets, abs=True).amax(dim=1)
        if name == "gradinput":
            return attr.InputXGradient(model).attribute(images, target=targets).sum(dim=1)
        if name == "guidedbackprop":
            return max_abs(attr.GuidedBackprop(model).attribute(images, target=targets))
        if name == "deconvnet":
            return max_abs(attr.Deconvolution(model).attribute(images, target=targets))
        reference = attr.GuidedGradCam(model, model.get_submodule(layer))
        return max_abs(reference.attribute(images, target=targets, interpolate_mode="bilinear"))


def resnet18_no_inplace():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    return model


@pytest.mark.parametrize("net", ["vgg", "resnet"])
@pytest.mark.parametrize("name", NAMES)
def test_matches_captum(name, net, make_vgg, tiny_resnet, set_inplace, images):
    # Captum's backward hooks refuse in-place ReLUs, so the comparison runs without them
    model = make_vgg(inplace=False) if net == "vgg" else set_inplace(tiny_resnet, False)
    method = METHODS.get(name)(model)
    result = method(images)
    expected = captum_maps(name, model, method.params.get("layer"), images, result.targets)
    assert all(r >= 0.99 for r in pearson(result.maps, expected))
    torch.testing.assert_close(result.maps, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


def test_matches_captum_on_resnet18():
    model = resnet18_no_inplace()
    images = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    for method in (GuidedBackprop(model), GuidedGradCAM(model, layer="layer4")):
        result = method(images)
        expected = captum_maps(method.name, model, "layer4", images, result.targets)
        assert all(r >= 0.99 for r in pearson(result.maps, expected))


@pytest.mark.parametrize("name", NAMES)
def test_shape_finite_and_batch_invariance(name, tiny_resnet):
    images = torch.randn(3, 3, 45, 53, generator=torch.Generator().manual_seed(3))
    method = METHODS.get(name)(tiny_resnet)
    together = method(images)
    assert together.maps.shape == (3, 45, 53) and together.maps.dtype == torch.float32
    assert torch.isfinite(together.maps).all()
    with torch.no_grad():
        torch.testing.assert_close(together.logits, tiny_resnet(images))
    for i in range(3):
        alone = method(images[i : i + 1], together.targets[i : i + 1])
        scale = together.maps[i].abs().max()
        torch.testing.assert_close(alone.maps[0], together.maps[i], rtol=1e-5, atol=1e-5 * scale)


def test_simonyan_reduction_and_gradient_x_input(small_vgg, images):
    targets = torch.tensor([1, 2, 3, 4])
    x = images.clone().requires_grad_(True)
    small_vgg(x).gather(1, targets[:, None]).sum().backward()
    torch.testing.assert_close(Gradient(small_vgg)(images, targets).maps, x.grad.abs().amax(1))
    expected = (x.grad * images).sum(dim=1)
    torch.testing.assert_close(GradientInput(small_vgg)(images, targets).maps, expected)


@pytest.mark.parametrize("cls", [GuidedBackprop, DeconvNet, GuidedGradCAM])
def test_inplace_relus_give_the_same_maps(cls, make_vgg, images):
    inplace, plain = make_vgg(inplace=True), make_vgg(inplace=False)
    torch.testing.assert_close(cls(inplace)(images).maps, cls(plain)(images).maps)


def test_rules_differ_where_the_definitions_do(small_vgg, images):
    """Guided keeps the forward ReLU mask, DeconvNet drops it; both differ from the gradient."""
    targets = torch.tensor([0, 1, 2, 3])
    maps = {c: c(small_vgg)(images, targets).maps for c in (Gradient, GuidedBackprop, DeconvNet)}
    assert not torch.allclose(maps[Gradient], maps[GuidedBackprop])
    assert not torch.allclose(maps[GuidedBackprop], maps[DeconvNet])


def test_guided_gradcam_is_guided_backprop_times_gradcam(tiny_resnet, images):
    forwards = []
    handle = tiny_resnet.register_forward_hook(lambda m, i, o: forwards.append(1))
    result = GuidedGradCAM(tiny_resnet, layer="layer1")(images)
    handle.remove()
    assert len(forwards) == 1
    guided = GuidedBackprop(tiny_resnet).attribute(images, result.targets).values
    cam = GradCAM(tiny_resnet, layer="layer1")(images, result.targets).maps
    cam = F.interpolate(cam[:, None], size=images.shape[2:], mode="bilinear")
    expected = (guided * cam).abs().amax(dim=1)
    torch.testing.assert_close(result.maps, expected, rtol=1e-5, atol=1e-5 * expected.max())


def module_ids(model):
    return [(name, id(module)) for name, module in model.named_modules()]


@pytest.mark.parametrize("fail", [False, True])
def test_model_comes_back_unchanged(fail, tiny_resnet, images, no_hooks_left):
    before = module_ids(tiny_resnet)
    relu = tiny_resnet.layer1.relu
    tiny_resnet.fail = fail
    for cls in (GuidedBackprop, DeconvNet, GuidedGradCAM):
        if fail:
            with pytest.raises(RuntimeError, match="forced"):
                cls(tiny_resnet)(images)
        else:
            cls(tiny_resnet)(images)
        assert module_ids(tiny_resnet) == before
        assert tiny_resnet.layer1.relu is relu and relu.inplace
        no_hooks_left(tiny_resnet)


def test_shared_relu_gets_one_stand_in(tiny_resnet):
    with rectified_relus(tiny_resnet, "guided") as switch:
        stand_in = tiny_resnet.layer1.relu
        assert not isinstance(stand_in, nn.ReLU)
        tiny_resnet(torch.zeros(1, 3, 32, 32))
    # stem, layer1 (twice), down, layer2 (twice)
    assert switch.calls == 6


class FunctionalReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()  # present, but forward uses F.relu
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean(dim=(2, 3)))


def test_functional_relu_is_refused(images):
    model = FunctionalReLU()
    with pytest.raises(ConfigError, match="functionally"):
        GuidedBackprop(model)(images)
    assert isinstance(model.relu, nn.ReLU)
    model.relu = nn.Identity()
    with pytest.raises(ConfigError, match=r"no nn\.ReLU module"):
        DeconvNet(model)


def test_other_activations_warn():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.SiLU())
    with pytest.warns(UserWarning, match="SiLU modules .* keep their ordinary backward"):
        GuidedBackprop(model)
