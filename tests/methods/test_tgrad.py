import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods import METHODS, FullGrad, TGrad
from xaibench.methods.support import inspect_model
from xaibench.methods.tgrad import effective_biases


def reference_tgrad(model: nn.Module, image: torch.Tensor, target: int):
    """docs/tgrad.md steps 1-6, as published, for ONE image (1, 3, H, W); gate 1[z > 0] included.

    The model must not use in-place activations. Returns the saliency (H, W) and the weights (L+1,).
    """
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    outputs = []
    handles = [conv.register_forward_hook(lambda m, i, o: outputs.append(o)) for conv in convs]
    x = image.clone().requires_grad_(True)
    score = model(x)[0, target]
    for handle in handles:
        handle.remove()
    grads = torch.autograd.grad(score, [x, *outputs])
    terms = [x * grads[0]]
    for conv, z, grad in zip(convs, outputs, grads[1:], strict=True):
        terms.append((z > 0) * conv.bias[:, None, None] * grad)
    size = image.shape[2:]
    saliency = torch.zeros(size, dtype=image.dtype)
    weights = []
    for term in terms:
        term_map = term[0].clamp(min=0).sum(dim=0)
        weight = term.sum() / score
        resized = F.interpolate(term_map[None, None], size=size, mode="bilinear")[0, 0]
        saliency += max(weight, 0) * resized / (resized.sum() + 1e-8)
        weights.append(weight)
    return saliency.detach(), torch.stack(weights).detach()


def test_equals_the_published_steps_one_image_at_a_time(make_vgg, images, set_inplace):
    model = make_vgg(inplace=True)
    plain = set_inplace(copy.deepcopy(model), False)
    method = TGrad(model)
    result = method(images)
    terms = result.extras["terms"]
    assert len(terms.names) == 1 + 6
    for i in range(len(images)):
        expected, weights = reference_tgrad(plain, images[i : i + 1], int(result.targets[i]))
        error = (result.maps[i] - expected).abs().max() / expected.abs().max()
        assert error <= 1e-4
        torch.testing.assert_close(terms.weights[i], weights, rtol=1e-4, atol=1e-5)
    assert (terms.weights > 0).any() and (terms.weights[:, 1:] != 0).all()


def test_complete_without_linear_biases(small_vgg, images):
    model = small_vgg.double()
    for module in model.classifier:
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)
    terms = TGrad(model)(images.double()).extras["terms"]
    torch.testing.assert_close(
        terms.completeness, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-10
    )


@pytest.mark.parametrize("architecture", ["resnet18", "tiny_resnet"])
def test_batchnorm_network_explains_all_but_the_linear_bias(
    architecture, tiny_resnet, images, randomise
):
    if architecture == "resnet18":
        torch.manual_seed(3)
        model = randomise(torchvision.models.resnet18(weights=None, num_classes=10)).eval()
        images = images[:2]
    else:
        model = tiny_resnet
    model = model.double()
    method = TGrad(model)
    result = method(images.double())
    score = result.logits.gather(1, result.targets[:, None])[:, 0]
    expected = 1 - model.fc.bias[result.targets].detach() / score
    terms = result.extras["terms"]
    torch.testing.assert_close(terms.completeness, expected, rtol=0, atol=1e-10)
    batch_norms = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    biased_convs = [
        n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.bias is not None
    ]
    assert sorted(terms.names[1:]) == sorted(batch_norms + biased_convs)


def test_inplace_relu_gives_the_same_result(make_vgg, images, set_inplace):
    model = make_vgg(inplace=True)
    plain = set_inplace(copy.deepcopy(model), False)
    torch.testing.assert_close(TGrad(model)(images).maps, TGrad(plain)(images).maps)
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


def test_terms_shapes_and_output(small_vgg, images):
    method = METHODS.get("tgrad")(small_vgg)
    result = method(images)
    terms = result.extras["terms"]
    assert result.maps.shape == (4, 64, 64)
    convs = ["features.0", "features.3", "features.6", "features.8", "features.11", "features.13"]
    assert terms.names == ["input", *convs]
    sides = [64, 64, 32, 16, 16, 8, 8]
    assert [tuple(m.shape) for m in terms.maps] == [(4, s, s) for s in sides]
    assert terms.weights.shape == (4, 7)
    assert all((m >= 0).all() for m in terms.maps)
    assert method.params == {}


def test_runs_inside_no_grad_and_inference_mode(small_vgg, images):
    expected = TGrad(small_vgg)(images).maps
    with torch.no_grad():
        torch.testing.assert_close(TGrad(small_vgg)(images).maps, expected)
    with torch.inference_mode():
        frozen = images.clone()
        torch.testing.assert_close(TGrad(small_vgg)(frozen).maps, expected)


def test_batchnorm_without_running_stats_is_refused(images):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten()
    )
    with pytest.raises(ConfigError, match="running statistics"):
        TGrad(model)(images)


def test_batchnorm1d_in_the_head_is_a_fullgrad_term_but_no_tgrad_map(images, randomise):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 3),
    )
    randomise(model)
    with torch.no_grad():
        model[6].running_mean.uniform_(-0.2, 0.2)
        model[6].running_var.uniform_(0.5, 1.5)
        model[6].bias.uniform_(-0.2, 0.2)
    model = model.double().eval()
    assert inspect_model(model, (64, 64)).findings["bias_terms"].status == "yes"
    fullgrad = FullGrad(model)(images.double()).extras["terms"]
    assert fullgrad.names == ["input", "0", "1", "5", "6", "8"]
    torch.testing.assert_close(
        fullgrad.completeness, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-10
    )
    tgrad = TGrad(model)(images.double()).extras["terms"]
    assert tgrad.names == ["input", "0", "1"]


def test_biases_are_made_once_and_again_after_the_weights_change(tiny_resnet, images, monkeypatch):
    """Later calls reuse the biases until a tensor they are made of changes: in place
    (`load_state_dict`, a re-initialisation, a forward in training mode) or for another one
    (a dtype conversion); each call's maps equal those of a new method on the model as it is."""
    from xaibench.methods import tgrad

    made = []
    monkeypatch.setattr(
        tgrad, "effective_biases", lambda model: made.append(1) or effective_biases(model)
    )
    method = TGrad(tiny_resnet)
    first = method(images).maps
    torch.testing.assert_close(method(images).maps, first, rtol=0, atol=0)
    assert len(made) == 1
    original = copy.deepcopy(tiny_resnet.state_dict())

    def changes_maps(change) -> None:
        calls = len(made)
        change()
        maps = method(images).maps
        assert len(made) == calls + 1
        torch.testing.assert_close(maps, TGrad(tiny_resnet)(images).maps, rtol=0, atol=0)
        assert not torch.equal(maps, first)
        tiny_resnet.load_state_dict(original)
        torch.testing.assert_close(method(images).maps, first, rtol=0, atol=0)

    batch_norm = next(m for m in tiny_resnet.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        changes_maps(lambda: batch_norm.running_mean.add_(0.5))
    changes_maps(batch_norm.reset_running_stats)
    changes_maps(lambda: tiny_resnet.train()(images) is None or tiny_resnet.eval())
    changes_maps(lambda: batch_norm.half().float())
