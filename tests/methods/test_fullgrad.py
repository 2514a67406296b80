import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaibench.methods.base import METHODS
from xaibench.methods.fullgrad import FullGrad


def reference_fullgrad(model, image, target, per_channel=False, align_corners=True):
    """The paper's FullGrad for ONE image (1, 3, H, W), with hooks on every conv and batch-norm.

    per_channel=True normalises each channel of a term on its own (pytorch-grad-cam's variant).
    The model must not use in-place activations. Returns the map (H, W) and every term's total.
    """
    layers, outputs = [], []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d) or (
            isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None
        ):
            layers.append(module)
            module.register_forward_hook(lambda m, i, o: outputs.append(o))
    x = image.clone().requires_grad_(True)
    score = model(x)[0, target]
    for module in layers:
        module._forward_hooks.clear()
    grads = torch.autograd.grad(score, [x, *outputs])
    terms = [x * grads[0]]
    for module, grad in zip(layers, grads[1:], strict=True):
        if isinstance(module, nn.BatchNorm2d):
            std = torch.sqrt(module.running_var + module.eps)
            bias = module.bias - module.running_mean * module.weight / std
        else:
            bias = module.bias
        terms.append(grad * (bias[:, None, None] if grad.ndim == 4 else bias))
    saliency = torch.zeros(image.shape[2:], dtype=image.dtype)
    for term in terms:
        if term.ndim != 4:
            continue
        magnitude = term[0].abs()
        dims = (1, 2) if per_channel else (0, 1, 2)
        magnitude = magnitude - magnitude.amin(dim=dims, keepdim=True)
        magnitude = magnitude / (magnitude.amax(dim=dims, keepdim=True) + 1e-6)
        resized = F.interpolate(
            magnitude[None], size=image.shape[2:], mode="bilinear", align_corners=align_corners
        )
        saliency += resized[0].sum(dim=0)
    return saliency.detach(), torch.stack([t.sum() for t in terms]).detach(), score.detach()


def pearson(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.mark.parametrize("network", ["small_vgg", "tiny_resnet"])
@pytest.mark.parametrize("size", [(48, 48), (45, 53)])
def test_equals_the_paper_one_image_at_a_time(network, size, request, set_inplace):
    model = request.getfixturevalue(network).double()
    images = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(6)).double()
    plain = set_inplace(copy.deepcopy(model), False)
    method = FullGrad(model)
    result = method(images)
    assert result.maps.shape == (3, *size) and result.maps.dtype == torch.float32
    for i in range(len(images)):
        expected, totals, _ = reference_fullgrad(plain, images[i : i + 1], result.targets[i])
        torch.testing.assert_close(result.maps[i].double(), expected, rtol=1e-5, atol=1e-5)
        terms = result.extras["terms"]
        torch.testing.assert_close(terms.totals[i], totals, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("network", ["small_vgg", "tiny_resnet"])
def test_terms_add_up_to_the_score(network, request, images):
    """The full-gradient decomposition is exact on networks of ReLUs, pooling and affine maps."""
    model = request.getfixturevalue(network).double()
    method = FullGrad(model)
    result = method(images.double(), torch.tensor([0, 1, 2, 3]))
    score = result.logits.gather(1, result.targets[:, None])[:, 0]
    terms = result.extras["terms"]
    torch.testing.assert_close(terms.totals.sum(dim=1), score, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        terms.completeness, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-9
    )
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert terms.names[0] == "input" and set(linear) <= set(terms.names)


def test_batch_invariance(small_vgg, images):
    method = METHODS.get("fullgrad")(small_vgg)
    assert method.params == {}
    together = method(images)
    assert torch.isfinite(together.maps).all() and (together.maps >= 0).all()
    for i in range(len(images)):
        alone = method(images[i : i + 1], together.targets[i : i + 1])
        torch.testing.assert_close(alone.maps[0], together.maps[i], rtol=1e-5, atol=1e-5)


def test_against_pytorch_grad_cam(tiny_resnet, images, set_inplace):
    """pytorch-grad-cam normalises every channel of a term on its own, and resizes with OpenCV.

    Our map equals the paper's code; the peer's map equals the per-channel variant of it (same
    terms), and differs from ours by that normalisation alone.
    """
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ours = FullGrad(tiny_resnet)(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peer = grad_cam.FullGrad(tiny_resnet, target_layers=[])
        peer_maps = peer(
            input_tensor=images.clone(),
            targets=[ClassifierOutputTarget(int(t)) for t in ours.targets],
        )
    plain = set_inplace(copy.deepcopy(tiny_resnet), False)
    for i in range(len(images)):
        image, target = images[i : i + 1], ours.targets[i]
        per_channel, _, _ = reference_fullgrad(
            plain, image, target, per_channel=True, align_corners=False
        )
        peer_map = torch.from_numpy(peer_maps[i])
        assert pearson(per_channel, peer_map) >= 0.99
        assert pearson(ours.maps[i], peer_map) < 0.95  # 0.80 to 0.85 on these images
