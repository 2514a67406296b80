"""The contract every registered method keeps, generated from the registry."""

import json

import pytest
import torch
from vit_helpers import FailingViT

from xaibench.core.errors import UnknownNameError
from xaibench.methods import METHODS

NAMES = METHODS.names()
ATTENTION = {name for name in NAMES if "class_attention" in METHODS.get(name).requires}
"""The methods that need attention over a class token: checked on a tiny ViT instead."""
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
RESIZES_TO_INPUT = {"tgrad", "random"}
# Fewer samples, masks and steps than the defaults: the contract does not depend on them.
FAST = {
    "rise": {"masks": 32},
    "smoothgrad": {"samples": 4},
    "smoothgrad_sq": {"samples": 4},
    "vargrad": {"samples": 4},
    "intgrad": {"steps": 8},
    "scorecam": {"channel_batch": 64},
}


def make(name, model):
    return METHODS.get(name)(model, **FAST.get(name, {}))


def model_for(name, model, request):
    """The model whose contract `name` is checked on: `model`, or for the attention methods
    timm's tiny ViT at any input size (`FailingViT`), once (at the tiny_resnet parameter)."""
    if name not in ATTENTION:
        return model
    if "small_vgg" in request.node.name:
        pytest.skip("the attention methods are checked on the tiny ViT, once")
    return FailingViT()


def batch(size, n=3, seed=4):
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def test_registry_lists_the_methods():
    assert {"tgrad", "gradcam", "random"} <= set(NAMES)
    for entry in METHODS:
        assert entry.obj.name == entry.name and entry.help


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", [(64, 64), (45, 53)])
@pytest.mark.parametrize("name", NAMES)
def test_output_contract(name, size, device, model, request):
    model = model_for(name, model, request).to(device)
    images = batch(size).to(device)
    method = make(name, model)
    json.dumps(method.params)
    result = method(images)
    maps = result.maps
    assert maps.ndim == 3 and maps.shape[0] == 3
    if name in RESIZES_TO_INPUT:
        assert maps.shape[1:] == size
    assert maps.dtype == torch.float32 and maps.device == images.device
    assert torch.isfinite(maps).all()
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(result.logits, logits)
    assert result.targets.dtype == torch.int64 and result.targets.device == images.device
    assert torch.equal(result.targets, logits.argmax(dim=1))


@pytest.mark.parametrize("name", NAMES)
def test_given_targets_are_explained(name, model, request):
    model = model_for(name, model, request)
    images = batch((64, 64))
    method = make(name, model)
    top1 = method(images)
    others = (top1.targets + 1) % top1.logits.shape[1]
    result = method(images, others)
    assert torch.equal(result.targets, others)
    if METHODS.get(name).uses_target:
        scale = top1.maps.abs().max()
        assert not torch.allclose(result.maps, top1.maps, rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.parametrize("size", [(64, 64), (45, 53)])
@pytest.mark.parametrize("name", NAMES)
def test_batch_invariance(name, size, model, request):
    if name in ("polycam_minus", "ablationcam", "occlusion") and "small_vgg" in request.node.name:
        pytest.skip(
            "weights (maps, for occlusion) are differences of near-equal scores on this random net: "
            "float32 noise"
        )
    model = model_for(name, model, request)
    images = batch(size)
    method = make(name, model)
    together = method(images)
    for i in range(len(images)):
        alone = method(images[i : i + 1], together.targets[i : i + 1])
        scale = together.maps[i].abs().max()
        torch.testing.assert_close(alone.maps[0], together.maps[i], rtol=1e-5, atol=1e-5 * scale)


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
    )


def assert_restored(model, before):
    state, flags, modes = before
    after_state, after_flags, after_modes = snapshot(model)
    assert after_flags == flags and after_modes == modes
    for key, value in state.items():
        assert torch.equal(after_state[key], value), key


@pytest.mark.parametrize("fail", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_model_left_as_it_was(name, fail, model, no_hooks_left, request):
    model = model_for(name, model, request)
    model.train()
    for i, parameter in enumerate(model.parameters()):
        parameter.requires_grad_(i % 2 == 0)
    method = make(name, model)
    before = snapshot(model)
    model.fail = fail
    if fail:
        with pytest.raises(RuntimeError, match="forced"):
            method(batch((64, 64)))
    else:
        method(batch((64, 64)))
    no_hooks_left(model)
    assert_restored(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_unknown_name_lists_close_names():
    with pytest.raises(UnknownNameError, match="tgrad") as info:
        METHODS.get("tgard")
    assert "tgrad" in info.value.close
    with pytest.raises(UnknownNameError, match="gradcam"):
        METHODS.get("grad-cam")
