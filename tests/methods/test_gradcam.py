import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods import METHODS, CAMMethod, GradCAM, TGrad, explain_together


def test_matches_pytorch_grad_cam_on_resnet18():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    images = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    result = GradCAM(model)(images)
    assert result.maps.shape == (3, 3, 3)
    targets = [ClassifierOutputTarget(int(t)) for t in result.targets]
    with pgc.GradCAM(model, target_layers=[model.layer4]) as reference:
        expected = reference(images, targets=targets)
    ours = scale_cam_image(result.maps.numpy(), (96, 96))
    for a, b in zip(ours, expected, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99


class NoBackward(torch.autograd.Function):
    """Identity whose backward fails: placed before the CAM layer, it proves the backward stops."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("backpropagated below the CAM layer")


class Guard(nn.Module):
    def forward(self, x):
        return NoBackward.apply(x)


def test_backward_stops_at_the_layer(small_vgg, images):
    small_vgg.features.insert(0, Guard())
    result = GradCAM(small_vgg, layer="features")(images)
    assert result.maps.shape == (4, 4, 4)
    with pytest.raises(AssertionError, match="below the CAM layer"):
        TGrad(small_vgg)(images)


def reference_gradcam(model, layer, images, targets):
    """ReLU(sum_c mean(dy/dA_c) A_c) from autograd on a copy without in-place ReLUs."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    outputs = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: outputs.append(o))
    logits = model(images)
    handle.remove()
    (grads,) = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), outputs[-1:])
    return torch.relu((grads.mean(dim=(2, 3), keepdim=True) * outputs[-1]).sum(dim=1)).detach()


def test_layer_followed_by_inplace_relu(small_vgg, images):
    targets = torch.tensor([0, 3, 5, 9])
    result = GradCAM(small_vgg, layer="features.3")(images, targets)
    expected = reference_gradcam(small_vgg, "features.3", images, targets)
    assert (expected > 0).any()
    torch.testing.assert_close(result.maps, expected)
    assert torch.equal(result.targets, targets)


def test_reused_module_is_read_at_its_last_run(tiny_resnet, images):
    # layer1.relu runs twice; its last run is the block's output, i.e. layer1's output
    last_run = GradCAM(tiny_resnet, layer="layer1.relu")(images).maps
    torch.testing.assert_close(last_run, GradCAM(tiny_resnet, layer="layer1")(images).maps)


def test_layer_choice(tiny_resnet):
    assert GradCAM(tiny_resnet).params == {"layer": "layer2"}
    assert METHODS.get("gradcam")(tiny_resnet, layer="down").params == {"layer": "down"}
    with pytest.raises(ConfigError, match="close names: layer2"):
        GradCAM(tiny_resnet, layer="layer22")


def test_layer_without_spatial_output_is_refused(tiny_resnet, images):
    with pytest.raises(ConfigError, match=r"\(B, C, h, w\)"):
        GradCAM(tiny_resnet, layer="fc")(images)


class XGradCAM(CAMMethod):
    """A variant written as a subclass that overrides one hook (test-only)."""

    def channel_weights(self, activations, gradients):
        total = activations.sum(dim=(2, 3)) + 1e-7
        return (gradients * activations).sum(dim=(2, 3)) / total


def test_methods_share_one_pass(tiny_resnet, images):
    # at layer1 the rest of the network is not linear in the activations, so the weights differ
    methods = [GradCAM(tiny_resnet, layer="layer1"), XGradCAM(tiny_resnet, layer="layer1")]
    forwards = []
    handle = tiny_resnet.register_forward_hook(lambda m, i, o: forwards.append(1))
    together = explain_together(methods, images)
    handle.remove()
    assert len(forwards) == 1
    for method, shared in zip(methods, together, strict=True):
        alone = method(images)
        torch.testing.assert_close(shared.maps, alone.maps)
        assert torch.equal(shared.targets, alone.targets)
    assert not torch.allclose(together[0].maps, together[1].maps)


def test_shared_pass_needs_one_layer(tiny_resnet):
    with pytest.raises(ConfigError, match="same model and layer"):
        explain_together([GradCAM(tiny_resnet), GradCAM(tiny_resnet, layer="down")], None)
