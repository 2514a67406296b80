"""Gradient scaling (fp16's loss scale): every backward of a method scales its score, and every
gradient the method reads is divided back, so that with a power-of-2 scale in float32 (exact
multiplications) the maps are bit-identical to the unscaled ones."""

import pytest
import torch
from tiny_models import tiny_cnn

from xaibench.core.precision import current_gradient_scale, gradient_scale, gradient_scaling
from xaibench.methods import METHODS
from xaibench.methods.hooks import backward, record_layers

SETTINGS = {
    "intgrad": {"steps": 4},
    "smoothgrad": {"samples": 3},
    "smoothgrad_sq": {"samples": 3},
    "vargrad": {"samples": 3},
}
BACKPROPAGATING = [
    "gradient", "gradinput", "guidedbackprop", "deconvnet", "guidedgradcam", "gradcam",
    "gradcampp", "xgradcam", "layercam", "hirescam", "tgrad", "fullgrad", "intgrad",
    "smoothgrad", "smoothgrad_sq", "vargrad",
]  # fmt: skip


def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_only_fp16_scales_its_gradients():
    assert gradient_scale("fp16") == 2.0**12
    assert {gradient_scale(p) for p in ("fp32", "tf32", "bf16")} == {1.0}
    with gradient_scaling(8.0):
        assert current_gradient_scale() == 8.0
        with pytest.raises(RuntimeError), gradient_scaling(2.0):
            raise RuntimeError
        assert current_gradient_scale() == 8.0
    assert current_gradient_scale() == 1.0


@pytest.mark.parametrize("name", BACKPROPAGATING)
def test_a_scaled_backward_gives_the_unscaled_maps(name, monkeypatch):
    model, x = tiny_cnn(), images()
    method = METHODS.get(name)(model, **SETTINGS.get(name, {}))
    reference = method(x)
    calls = []
    grad = torch.autograd.grad

    def counted(outputs, *args, **kwargs):
        calls.append(outputs)
        return grad(outputs, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted)
    with gradient_scaling(2.0**10):
        scaled = method(x)
    assert calls  # the method backpropagates
    assert torch.equal(scaled.targets, reference.targets)
    assert torch.equal(scaled.maps, reference.maps)


def test_the_backpropagated_score_is_scaled_and_what_methods_read_divided_back():
    model, x = tiny_cnn(), images().requires_grad_(True)
    raw = []
    with record_layers(model, ["3"], gradients=True) as rec:
        logits = model(x)
        layer = rec.last("3")
        score = logits[:, 0].sum()
        (plain,) = backward(score, [x], retain_graph=True)
        plain_layer = layer.gradient
        handle = logits.register_hook(lambda g: raw.append(g.clone()))
        with gradient_scaling(4.0):
            (scaled,) = backward(score, [x], retain_graph=True)
        handle.remove()
    assert raw[0][:, 0].eq(4.0).all() and raw[0][:, 1:].eq(0).all()
    assert torch.equal(scaled, plain)
    assert torch.equal(layer.gradient, plain_layer)


def test_an_overflowing_scale_is_halved_until_the_gradients_are_finite(monkeypatch):
    model, x = tiny_cnn(), images()
    method = METHODS.get("tgrad")(model)
    reference = method(x)
    scales = []
    grad = torch.autograd.grad

    def noting(outputs, *args, **kwargs):
        result = grad(outputs, *args, **kwargs)
        scales.append(bool(all(torch.isfinite(g).all() for g in result)))
        return result

    monkeypatch.setattr(torch.autograd, "grad", noting)
    with gradient_scaling(2.0**200):  # the scaled score is Inf in float32
        scaled = method(x)
    assert scales[0] is False and scales[-1] is True and len(scales) > 2
    assert torch.equal(scaled.maps, reference.maps)


def test_a_non_finite_score_is_not_retried(monkeypatch):
    x = torch.ones(1, 3, requires_grad=True)
    calls = []
    grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: calls.append(1) or grad(*a, **k))
    with gradient_scaling(2.0**4):
        (g,) = backward((x * float("inf")).sum(), [x])
    assert len(calls) == 1 and not torch.isfinite(g).any()
