import copy

import pytest
import torch
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods.hooks import autograd_enabled, gradient_input, record_layers


def conv_output_and_gradient(model, images):
    """Reference: output of features.0 and d(sum of logit 0)/d(output) on a copy without in-place."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    outputs = []
    handle = model.features[0].register_forward_hook(lambda m, i, o: outputs.append(o))
    logits = model(images)
    handle.remove()
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), outputs)
    return outputs[0].detach(), grad


def test_records_pre_inplace_activation_gradient_and_edge(small_vgg, images, no_hooks_left):
    expected_out, expected_grad = conv_output_and_gradient(small_vgg, images)
    x = images.clone().requires_grad_(True)
    with record_layers(
        small_vgg, ["features.0"], activations=True, gradients=True, edges=True
    ) as rec:
        logits = small_vgg(x)
        call = rec.last("features.0")
        (edge_grad,) = torch.autograd.grad(logits[:, 0].sum(), inputs=[call.edge])
    no_hooks_left(small_vgg)
    # features.1 is ReLU(inplace=True): the copy keeps the negative values it overwrote
    assert (call.activation < 0).any()
    torch.testing.assert_close(call.activation, expected_out)
    torch.testing.assert_close(call.gradient, expected_grad)
    torch.testing.assert_close(edge_grad, expected_grad)
    assert call.shape == expected_out.shape


def test_hooks_removed_after_exception_in_block(small_vgg, images, no_hooks_left):
    with pytest.raises(KeyError), record_layers(small_vgg, ["features.0", "features.3"]):
        small_vgg(images)
        raise KeyError("boom")
    no_hooks_left(small_vgg)


def test_hooks_removed_after_exception_in_forward(small_vgg, images, no_hooks_left):
    small_vgg.fail = True
    names = [name for name, _ in small_vgg.named_modules() if name]
    with pytest.raises(RuntimeError, match="forced"), record_layers(small_vgg, names) as rec:
        small_vgg(images)
    assert [c.name for c in rec.calls][:2] == ["features.0", "features.1"]
    no_hooks_left(small_vgg)


def test_tensor_hooks_removed_on_exit(small_vgg, images):
    seen = []
    x = images.clone().requires_grad_(True)
    with record_layers(small_vgg, ["features.0"], reduce_gradient=lambda c, g: seen.append(g)):
        logits = small_vgg(x)
    logits.sum().backward()
    assert seen == []


def test_reduce_gradient_result_is_stored(small_vgg, images):
    x = images.clone().requires_grad_(True)
    with record_layers(
        small_vgg, ["features.3"], reduce_gradient=lambda call, g: (call.name, g.sum(dim=1))
    ) as rec:
        logits = small_vgg(x)
        torch.autograd.grad(logits[:, 1].sum(), x)
    (call,) = rec.calls
    name, reduced = call.reduced
    assert name == "features.3"
    assert reduced.shape == (4, *call.shape[2:])
    assert call.gradient is None and call.activation is None


def test_last_call_of_reused_module(tiny_resnet, images):
    with record_layers(tiny_resnet, ["layer1.relu"], activations=True) as rec:
        tiny_resnet(images)
    first, second = rec.calls
    assert rec.last("layer1.relu") is second
    assert not torch.equal(first.activation, second.activation)
    with pytest.raises(ConfigError, match="did not run"):
        rec.last("layer2.relu")


def test_non_tensor_output():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    model = nn.Sequential(Pair())
    with record_layers(model, ["0"]) as rec:
        model(torch.zeros(1, 3, 4, 4))
    assert rec.calls[0].shape is None
    with pytest.raises(ConfigError, match="not a tensor"), record_layers(model, ["0"], edges=True):
        model(torch.zeros(1, 3, 4, 4))


def test_gradients_need_a_graph(small_vgg, images):
    with (
        pytest.raises(ConfigError, match="requires_grad"),
        record_layers(small_vgg, ["features.0"], gradients=True),
        torch.no_grad(),
    ):
        small_vgg(images)


def test_gradient_input_leaves_caller_tensor_alone():
    with torch.inference_mode():
        frozen = torch.ones(2, 3, 4, 4)
    with autograd_enabled():
        leaf = gradient_input(frozen)
        (leaf * 2).sum().backward()
    assert leaf.requires_grad and not leaf.is_inference()
    assert torch.equal(leaf.grad, torch.full_like(leaf, 2.0))
    plain = torch.zeros(1, 3, 2, 2)
    assert gradient_input(plain).requires_grad and not plain.requires_grad
