"""record_layers(reduce_output=...) and module_stack: the two hooks feature visualisation and MC
dropout rely on."""

import pytest
import torch
from torch import nn

from xaibench.methods.hooks import module_stack, record_layers


def test_reduce_output_reads_the_live_output_before_an_inplace_relu(
    small_vgg, images, no_hooks_left
):
    """features.0 is followed by ReLU(inplace=True): the reduced value is the conv's mean, and its
    gradient is the conv's, as on a copy of the model without in-place ops."""
    x = images.clone().requires_grad_(True)
    with record_layers(small_vgg, ["features.0"], reduce_output=lambda c, o: o[:, 3].mean()) as rec:
        small_vgg(x)
    value = rec.last("features.0").reduced_output
    (grad,) = torch.autograd.grad(value, x)
    no_hooks_left(small_vgg)

    expected = small_vgg.features[0](images.clone().requires_grad_(True))
    reference_x = images.clone().requires_grad_(True)
    reference = small_vgg.features[0](reference_x)[:, 3].mean()
    (expected_grad,) = torch.autograd.grad(reference, reference_x)
    assert (expected[:, 3] < 0).any()
    torch.testing.assert_close(value, reference.detach())
    torch.testing.assert_close(grad, expected_grad)


def test_module_stack_names_the_running_modules(small_vgg, images, no_hooks_left):
    seen = []
    with module_stack(small_vgg) as stack:
        # registered after module_stack's own pre-hook, so it runs after the push
        handle = small_vgg.features[1].register_forward_pre_hook(
            lambda *_: seen.append(list(stack))
        )
        small_vgg(images)
        handle.remove()
        assert stack == []
    assert seen == [["", "features", "features.1"]]
    no_hooks_left(small_vgg)


def test_module_stack_is_left_empty_by_a_forward_that_raises(small_vgg, images, no_hooks_left):
    small_vgg.fail = True
    with module_stack(small_vgg) as stack:
        with pytest.raises(RuntimeError, match="forced"):
            small_vgg(images)
        assert stack == []
    no_hooks_left(small_vgg)


def test_module_stack_of_a_module_without_children():
    layer = nn.Linear(2, 2)
    with module_stack(layer) as stack:
        seen = []
        layer.register_forward_pre_hook(lambda *_: seen.append(list(stack)))
        layer(torch.zeros(1, 2))
    assert seen == [[""]]
