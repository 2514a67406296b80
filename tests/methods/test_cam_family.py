"""Grad-CAM++, XGrad-CAM, Layer-CAM, HiResCAM and Eigen-CAM: peers, properties, one shared pass."""

import json

import pytest
import torch
from grad_cam_reference import correlations, peer_maps

from xaibench.methods.base import METHODS
from xaibench.methods.cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
    explain_together,
)

GRADIENT_CAMS = [GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM]
FAMILY = [GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, EigenCAM]
PEER_NAMES = {
    GradCAMPlusPlus: "GradCAMPlusPlus",
    XGradCAM: "XGradCAM",
    LayerCAM: "LayerCAM",
    HiResCAM: "HiResCAM",
}


@pytest.fixture(scope="module")
def photos():
    """(3, 3, 64, 64) seeded noise."""
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
@pytest.mark.parametrize("method_cls", list(PEER_NAMES))
def test_matches_pytorch_grad_cam(method_cls, layer, resnet18, photos):
    pgc = pytest.importorskip("pytorch_grad_cam")
    result = method_cls(resnet18, layer=layer)(photos)
    expected = peer_maps(
        getattr(pgc, PEER_NAMES[method_cls]), resnet18, layer, photos, result.targets
    )
    assert min(correlations(result.maps, expected)) >= 0.99


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_eigencam_matches_pytorch_grad_cam_up_to_sign(layer, resnet18, photos):
    # the peer keeps the SVD's arbitrary sign: its map is ReLU(p) or ReLU(-p) for our projection p.
    # EigenCAM.cam(-A) is ReLU(-p): negating the activations flips the oriented axis.
    pgc = pytest.importorskip("pytorch_grad_cam")
    method = EigenCAM(resnet18, layer=layer)
    result = method(photos)
    expected = peer_maps(pgc.EigenCAM, resnet18, layer, photos, result.targets)
    activations = {}
    handle = resnet18.get_submodule(layer).register_forward_hook(
        lambda m, i, o: activations.setdefault("value", o.detach())
    )
    with torch.no_grad():
        resnet18(photos)
    handle.remove()
    flipped = method.cam(-activations["value"], None)
    for same, other in zip(
        correlations(result.maps, expected), correlations(flipped, expected), strict=True
    ):
        assert max(same, other) >= 0.99


@pytest.mark.parametrize("loading_sign", [1.0, -1.0])
def test_eigencam_sign_follows_the_channel_sum(loading_sign, tiny_resnet):
    # rank-one activations s(x) v plus noise: the first principal axis is v, and the map must be
    # high where the channel-summed activation is high, whatever the sign of the loadings
    gen = torch.Generator().manual_seed(0)
    spatial = torch.rand(2, 1, 6, 7, generator=gen)
    loadings = loading_sign * torch.rand(2, 5, 1, 1, generator=gen)
    activations = spatial * loadings + 1e-3 * torch.randn(2, 5, 6, 7, generator=gen)
    maps = EigenCAM(tiny_resnet).cam(activations, None)
    summed = activations.sum(dim=1)
    expected = torch.relu(summed - summed.mean(dim=(1, 2), keepdim=True))
    for ours, reference in zip(maps, expected, strict=True):
        assert torch.corrcoef(torch.stack([ours.ravel(), reference.ravel()]))[0, 1] > 0.999


def test_eigencam_is_class_agnostic(tiny_resnet, images):
    method = EigenCAM(tiny_resnet, layer="layer1")
    top1 = method(images)
    others = method(images, (top1.targets + 1) % top1.logits.shape[1])
    torch.testing.assert_close(others.maps, top1.maps)
    assert not torch.equal(others.targets, top1.targets)


def test_weights_agree_where_gradients_are_spatially_constant(resnet18, photos):
    # layer4 is followed by global average pooling and a linear layer, so dy/dA_c is constant over
    # space: Grad-CAM, XGrad-CAM and HiResCAM are then the same map
    maps = [cls(resnet18, layer="layer4")(photos).maps for cls in (GradCAM, XGradCAM, HiResCAM)]
    assert maps[0].amax() > 0
    torch.testing.assert_close(maps[1], maps[0])
    torch.testing.assert_close(maps[2], maps[0])


def test_gradcampp_reference_formula(tiny_resnet, images):
    gen = torch.Generator().manual_seed(3)
    activations = torch.relu(torch.randn(2, 4, 5, 5, generator=gen))
    gradients = torch.randn(2, 4, 5, 5, generator=gen)
    gradients[0, 1] = 0
    method = GradCAMPlusPlus(tiny_resnet)
    weights = method.channel_weights(activations, gradients)
    g, a = gradients.double(), activations.double()
    alpha = g**2 / (2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3)
    expected = (alpha.nan_to_num() * torch.relu(g)).sum(dim=(2, 3))
    torch.testing.assert_close(weights.double(), expected)
    assert weights[0, 1] == 0


def test_zero_channels_give_finite_weights(tiny_resnet):
    activations = torch.zeros(1, 3, 4, 4)
    activations[0, 0, 1, 2] = 1.0
    gradients = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(
        GradCAMPlusPlus(tiny_resnet).channel_weights(activations, gradients)
    ).all()
    weights = XGradCAM(tiny_resnet).channel_weights(activations, gradients)
    assert torch.isfinite(weights).all() and (weights[0, 1:] == 0).all()


@pytest.mark.parametrize("size", [(64, 64), (45, 53)])
@pytest.mark.parametrize("method_cls", FAMILY)
def test_batch_invariant_finite_shape(method_cls, size, model):
    images = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(4))
    method = method_cls(model)
    together = method(images)
    assert together.maps.dtype == torch.float32 and together.maps.ndim == 3
    assert together.maps.shape[0] == 3 and torch.isfinite(together.maps).all()
    for i in range(len(images)):
        alone = method(images[i : i + 1], together.targets[i : i + 1])
        torch.testing.assert_close(alone.maps[0], together.maps[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method_cls", FAMILY)
def test_registered_and_constructible(method_cls, model):
    assert METHODS.get(method_cls.name) is method_cls
    assert METHODS.entry(method_cls.name).help
    method = METHODS.get(method_cls.name)(model)
    assert method.params == {"layer": method.layer}
    json.dumps(method.params)


def count_forwards(model):
    forwards = []
    return forwards, model.register_forward_hook(lambda m, i, o: forwards.append(1))


def test_explain_together_is_one_pass_and_equals_each_alone(tiny_resnet, images):
    # layer1: the network above it is not linear in the activations, so the five maps differ
    names = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"]
    methods = [METHODS.get(name)(tiny_resnet, layer="layer1") for name in names]
    targets = torch.tensor([0, 1, 2, 3])
    forwards, handle = count_forwards(tiny_resnet)
    together = explain_together(methods, images, targets)
    handle.remove()
    assert len(forwards) == 1
    for method, shared in zip(methods, together, strict=True):
        alone = method(images, targets)
        torch.testing.assert_close(shared.maps, alone.maps)
        torch.testing.assert_close(shared.logits, alone.logits)
        assert torch.equal(shared.targets, targets)
    for i, first in enumerate(together):
        for second in together[i + 1 :]:
            assert not torch.allclose(first.maps, second.maps)


def test_eigencam_in_a_shared_pass(tiny_resnet, images):
    methods = [GradCAM(tiny_resnet, layer="layer1"), EigenCAM(tiny_resnet, layer="layer1")]
    together = explain_together(methods, images)
    torch.testing.assert_close(together[1].maps, methods[1](images).maps)
