import pytest
import torch
import torch.nn.functional as F
import torchvision

from xaibench.core.errors import ConfigError
from xaibench.methods.base import METHODS
from xaibench.methods.polycam import (
    PolyCAM,
    PolyCAMMinus,
    PolyCAMPlusMinus,
    find_stage_layers,
    refine,
)

VARIANTS = {"polycam": "+", "polycam_minus": "-", "polycam_pm": "+/-"}


def reference_polycam(model, image, target, layers, variant):
    """The paper's recursion for ONE image (1, 3, H, W), one channel and one layer at a time."""
    modules = dict(model.named_modules())
    activations = {}
    handles = [
        modules[name].register_forward_hook(
            lambda m, i, o, name=name: activations.setdefault(name, o.detach().clone())
        )
        for name in layers
    ]
    with torch.no_grad():
        base = F.softmax(model(image), dim=1)[0, target]
    for handle in handles:
        handle.remove()

    def prob(x):
        with torch.no_grad():
            return F.softmax(model(x), dim=1)[0, target]

    saliency = None
    for name in reversed(layers):
        maps = activations[name][0]
        cam = torch.zeros(maps.shape[1:], dtype=maps.dtype)
        for channel_map in maps:
            span = channel_map.max() - channel_map.min()
            mask = (channel_map - channel_map.min()) / span if span > 0 else 0 * channel_map
            mask = F.interpolate(mask[None, None], size=image.shape[2:], mode="bilinear")
            if variant == "+":
                weight = prob(image * mask)
            elif variant == "-":
                weight = max(base - prob(image * (1 - mask)), 0)
            else:
                weight = max(prob(image * mask) + base - prob(image * (1 - mask)), 0)
            cam += weight * channel_map
        cam = torch.relu(cam)
        if saliency is None:
            saliency = cam
            continue
        (h, w), (hc, wc) = cam.shape, saliency.shape
        local = torch.zeros(hc, wc, dtype=cam.dtype)  # the mean of cam under each coarse pixel
        for i in range(hc):
            for j in range(wc):
                rows = slice(i * h // hc, -(-(i + 1) * h // hc))
                cols = slice(j * w // wc, -(-(j + 1) * w // wc))
                local[i, j] = cam[rows, cols].mean()
        local = F.interpolate(local[None, None], size=(h, w), mode="bilinear")[0, 0]
        up = F.interpolate(saliency[None, None], size=(h, w), mode="bilinear")[0, 0]
        saliency = cam / local.clamp(min=1e-12) * up
    return saliency


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("size", [(32, 32), (45, 39)])
def test_equals_the_paper_one_image_at_a_time(name, size, small_vgg):
    model = small_vgg.double()
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(8)).double()
    layers = ["features.1", "features.4", "features.9"]
    method = METHODS.get(name)(model, layers=layers, channel_batch=5)
    result = method(images)
    assert result.maps.shape == (2, *size)
    for i in range(len(images)):
        expected = reference_polycam(
            model, images[i : i + 1], result.targets[i], layers, VARIANTS[name]
        )
        torch.testing.assert_close(result.maps[i].double(), expected, rtol=1e-5, atol=1e-7)
        assert expected.max() > 0


def test_finest_map_has_the_resolution_of_the_earliest_layer(tiny_resnet, images):
    method = PolyCAM(tiny_resnet)
    assert method.layers == ["stem.2", "layer1", "layer2"]
    assert method.params == {"layers": ["stem.2", "layer1", "layer2"], "channel_batch": None}
    assert method(images[:2]).maps.shape == (2, 32, 32)
    assert PolyCAM(tiny_resnet, layers=["layer1", "layer2"])(images[:2]).maps.shape == (2, 16, 16)
    assert PolyCAM(tiny_resnet, layers=["layer2"])(images[:2]).maps.shape == (2, 8, 8)


@pytest.mark.parametrize("cls", [PolyCAM, PolyCAMMinus, PolyCAMPlusMinus])
def test_batch_invariance_and_chunking(cls, tiny_resnet, images):
    images = images[:3, :, :40, :40]
    method = cls(tiny_resnet, channel_batch=7)
    together = method(images)
    assert together.maps.dtype == torch.float32 and torch.isfinite(together.maps).all()
    assert (together.maps >= 0).all()
    for i in range(len(images)):
        alone = method(images[i : i + 1], together.targets[i : i + 1])
        scale = together.maps[i].abs().max()
        torch.testing.assert_close(alone.maps[0], together.maps[i], rtol=1e-5, atol=1e-5 * scale)
    unchunked = cls(tiny_resnet, channel_batch=1000)(images)
    torch.testing.assert_close(unchunked.maps, together.maps, rtol=1e-5, atol=1e-6)


def test_lnorm_takes_only_the_distribution_of_the_finer_cam():
    """A flat finer CAM passes the coarse map through; scaling the finer CAM changes nothing."""
    generator = torch.Generator().manual_seed(0)
    cam = torch.rand(2, 8, 8, generator=generator) + 0.1
    coarse = torch.rand(2, 4, 4, generator=generator)
    upsampled = F.interpolate(coarse[:, None], size=(8, 8), mode="bilinear")[:, 0]
    torch.testing.assert_close(refine(torch.full((2, 8, 8), 5.0), coarse), upsampled)
    torch.testing.assert_close(refine(7 * cam, coarse), refine(cam, coarse))
    assert not torch.allclose(refine(cam, coarse), upsampled)


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (lambda: torchvision.models.resnet18(), ["relu", "layer1", "layer2", "layer3", "layer4"]),
        (
            lambda: torchvision.models.vgg11(),
            ["features.1", "features.4", "features.9", "features.14", "features.19", "features"],
        ),
    ],
)
def test_stage_layers_of_torchvision_models(factory, expected):
    assert find_stage_layers(factory().eval(), input_size=(64, 64)) == expected


def test_rejects_bad_settings(small_vgg):
    with pytest.raises(ConfigError, match="channel_batch"):
        PolyCAM(small_vgg, channel_batch=0)
    with pytest.raises(ConfigError, match=r"features\.99"):
        PolyCAM(small_vgg, layers=["features.99"])
    with pytest.raises(ConfigError, match=r"not \(B, C, h, w\)"):
        PolyCAM(small_vgg, layers=["classifier.0"])(torch.zeros(1, 3, 32, 32))
