"""Score-CAM and Ablation-CAM: definitions, peers, chunking, batch invariance, the ablation hook."""

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from grad_cam_reference import PeerDefinitionScoreCAM, correlations, peer_maps
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods.base import METHODS
from xaibench.methods.cam import layer_forward, weighted_cam
from xaibench.methods.cam_perturbation import (
    AblationCAM,
    ScoreCAM,
    precomputed_output,
)

METHOD_CLASSES = [ScoreCAM, AblationCAM]


@contextmanager
def replaced_output(
    model: nn.Module, layer: str, replace: Callable[[torch.Tensor], torch.Tensor], run: int
) -> Iterator[None]:
    """Reference for Ablation-CAM: within the block, the `run`-th call (1-based) of submodule `layer` returns replace(output).

    The other calls of the module are left alone, so a module that runs several times is changed
    at the run a CAM reads. The hook is removed when the block ends, also on an exception.
    """
    calls = 0

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        nonlocal calls
        calls += 1
        return replace(output) if calls == run else None

    handle = model.get_submodule(layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def small_photos():
    """(2, 3, 32, 32) seeded noise: resnet18's layer1 is then 64 channels of 8 x 8."""
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_scorecam_matches_pytorch_grad_cam(resnet18, small_photos):
    pgc = pytest.importorskip("pytorch_grad_cam")
    result = ScoreCAM(resnet18, layer="layer1", channel_batch=64)(small_photos)
    expected = peer_maps(pgc.ScoreCAM, resnet18, "layer1", small_photos, result.targets)
    assert min(correlations(result.maps, expected)) >= 0.99


def test_scorecam_differs_from_the_peer_where_the_class_is_confident(resnet18, small_photos):
    # with confident logits the peer's softmax over the channels puts almost all weight on one
    # channel; class probabilities (the paper's score) keep every channel that keeps the class.
    # The peer's own definition, rebuilt on our machinery, still matches it.
    pgc = pytest.importorskip("pytorch_grad_cam")
    confident = copy.deepcopy(resnet18)
    with torch.no_grad():
        confident.fc.weight.mul_(50)
    ours = ScoreCAM(confident, layer="layer1", channel_batch=64)(small_photos)
    assert (ours.logits.softmax(dim=1).amax(dim=1) > 0.99).all()
    expected = peer_maps(pgc.ScoreCAM, confident, "layer1", small_photos, ours.targets)
    rebuilt, targets = PeerDefinitionScoreCAM(confident, layer="layer1").peer_maps(small_photos)
    assert torch.equal(targets, ours.targets)
    assert min(correlations(rebuilt, expected)) >= 0.999
    assert max(correlations(ours.maps, expected)) < 0.9


def test_scorecam_scores_are_class_probabilities_of_masked_images(small_vgg, images):
    method = ScoreCAM(small_vgg, layer="features.6")
    result = layer_forward(small_vgg, "features.6", images, None)
    activations = result.activations
    scores = method.channel_scores(images, activations, result.targets)
    b, c = activations.shape[:2]
    upsampled = F.interpolate(activations, size=(64, 64), mode="bilinear", align_corners=False)
    low = upsampled.amin(dim=(2, 3), keepdim=True)
    masks = (upsampled - low) / (upsampled.amax(dim=(2, 3), keepdim=True) - low)
    masked = (images[:, None] * masks[:, :, None]).flatten(0, 1)
    with torch.no_grad():
        probabilities = small_vgg(masked).softmax(dim=1).view(b, c, -1)
    expected = probabilities.gather(2, result.targets[:, None, None].expand(b, c, 1))[..., 0]
    torch.testing.assert_close(scores, expected)
    maps = method(images).maps
    torch.testing.assert_close(maps, torch.relu(torch.einsum("bc,bchw->bhw", scores, activations)))


def test_scorecam_skips_constant_maps(small_vgg, images):
    method = ScoreCAM(small_vgg, layer="features.6")
    result = layer_forward(small_vgg, "features.6", images, None)
    activations = result.activations.clone()
    activations[0, 2] = 0.5
    activations[1, 3] = 0.0
    scores = method.channel_scores(images, activations, result.targets)
    assert scores[0, 2] == 0 and scores[1, 3] == 0
    torch.testing.assert_close(
        scores[2:], method.channel_scores(images[2:], activations[2:], result.targets[2:])
    )


def reference_ablation(model, layer, images, targets):
    """ReLU(sum_k (y - y_k) / y A_k), one image and one channel at a time (test-only)."""
    result = layer_forward(model, layer, images, targets)
    module = model.get_submodule(layer)
    score = result.logits.gather(1, result.targets[:, None])[:, 0]
    weights = torch.zeros(result.activations.shape[:2])
    for i in range(len(images)):
        for k in range(result.activations.shape[1]):

            def zero_channel(m, inputs, output, k=k):
                output = output.clone()
                output[:, k] = 0
                return output

            handle = module.register_forward_hook(zero_channel)
            with torch.no_grad():
                ablated = model(images[i : i + 1])[0, result.targets[i]]
            handle.remove()
            weights[i, k] = (score[i] - ablated) / score[i]
    return torch.relu(torch.einsum("bc,bchw->bhw", weights, result.activations))


@pytest.mark.parametrize("layer", ["features.3", "features.7"])
def test_ablationcam_definition(layer, small_vgg, images):
    # features.3 is a convolution (signed output, followed by an in-place ReLU), features.7 a ReLU
    result = AblationCAM(small_vgg, layer=layer, channel_batch=5)(images)
    expected = reference_ablation(small_vgg, layer, images, None)
    assert expected.amax() > 0
    torch.testing.assert_close(result.maps, expected, rtol=1e-4, atol=1e-4 * expected.amax())


def test_ablationcam_matches_pytorch_grad_cam(resnet18, small_photos):
    pgc = pytest.importorskip("pytorch_grad_cam")
    result = AblationCAM(resnet18, layer="layer1", channel_batch=64)(small_photos)
    expected = peer_maps(pgc.AblationCAM, resnet18, "layer1", small_photos, result.targets)
    assert min(correlations(result.maps, expected)) >= 0.99


def test_ablationcam_differs_from_the_peer_on_signed_layers(small_vgg, images):
    # the peer ablates a layer with negative values with (min - 1e7) instead of 0; ours follows
    # the paper (zero), which test_ablationcam_definition checks on the same layer
    pgc = pytest.importorskip("pytorch_grad_cam")
    result = AblationCAM(small_vgg, layer="features.3")(images)
    expected = peer_maps(pgc.AblationCAM, small_vgg, "features.3", images, result.targets)
    assert min(correlations(result.maps, expected)) < 0.9


def test_ablation_at_the_last_run_of_a_reused_module(tiny_resnet, images):
    # layer1.relu runs twice; its last run is layer1's output
    reused = AblationCAM(tiny_resnet, layer="layer1.relu")(images).maps
    torch.testing.assert_close(reused, AblationCAM(tiny_resnet, layer="layer1")(images).maps)


@pytest.mark.parametrize("method_cls", METHOD_CLASSES)
def test_chunked_equals_unchunked(method_cls, tiny_resnet, images):
    chunked = method_cls(tiny_resnet, channel_batch=3)(images)
    whole = method_cls(tiny_resnet, channel_batch=10_000)(images)
    torch.testing.assert_close(chunked.maps, whole.maps)
    assert whole.maps.amax() > 0


@pytest.mark.parametrize("size", [(64, 64), (45, 53)])
@pytest.mark.parametrize("method_cls", METHOD_CLASSES)
def test_batch_invariant_finite_shape(method_cls, size, model):
    images = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(4))
    method = method_cls(model)
    together = method(images)
    assert together.maps.dtype == torch.float32 and together.maps.ndim == 3
    assert together.maps.shape[0] == 3 and torch.isfinite(together.maps).all()
    # the weights are differences of nearly equal scores (SmallVGG's logits barely move when a
    # channel is removed), so float32 rounding shows at about 1e-5 of the map's maximum
    for i in range(len(images)):
        alone = method(images[i : i + 1], together.targets[i : i + 1])
        scale = together.maps[i].abs().max()
        torch.testing.assert_close(alone.maps[0], together.maps[i], rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("method_cls", METHOD_CLASSES)
def test_registered_and_constructible(method_cls, model):
    assert METHODS.get(method_cls.name) is method_cls
    assert METHODS.entry(method_cls.name).help
    method = METHODS.get(method_cls.name)(model)
    assert method.params == {"layer": method.layer, "channel_batch": None}
    json.dumps(method.params)
    assert method_cls(model, channel_batch=7).params["channel_batch"] == 7


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
@pytest.mark.parametrize("method_cls", METHOD_CLASSES)
def test_channel_batch_must_be_a_positive_integer(method_cls, bad, tiny_resnet):
    with pytest.raises(ConfigError, match="channel_batch"):
        method_cls(tiny_resnet, channel_batch=bad)


def test_replaced_output_changes_one_run_and_is_removed(tiny_resnet, images, no_hooks_left):
    outputs = []
    with torch.no_grad(), replaced_output(tiny_resnet, "layer1.relu", torch.zeros_like, run=2):
        # registered after the replacing hook, so it sees what the module returns
        handle = tiny_resnet.layer1.relu.register_forward_hook(lambda m, i, o: outputs.append(o))
        tiny_resnet(images)
    handle.remove()
    assert outputs[0].abs().sum() > 0 and outputs[1].abs().sum() == 0
    tiny_resnet.fail = True
    with (
        pytest.raises(RuntimeError, match="forced"),
        replaced_output(tiny_resnet, "layer1", torch.zeros_like, run=1),
    ):
        tiny_resnet(images)
    no_hooks_left(tiny_resnet)


def count_forwards(module):
    """Wrap the module's class forward to count its runs; returns the counter (a list)."""
    runs = []
    cls_forward = type(module).forward

    def forward(self, *args, **kwargs):
        runs.append(1)
        return cls_forward(self, *args, **kwargs)

    return runs, forward


def test_precomputed_output_skips_one_run_and_is_restored(tiny_resnet, images, no_hooks_left):
    relu = tiny_resnet.layer1.relu
    runs, counted = count_forwards(relu)
    relu.forward = counted.__get__(relu)
    outputs = []
    handle = relu.register_forward_hook(lambda m, i, o: outputs.append(o))
    marker = torch.full((4, 8, 16, 16), 7.0)
    with torch.no_grad(), precomputed_output(tiny_resnet, "layer1.relu", marker, 2, skip=True):
        tiny_resnet(images)
    handle.remove()
    # the second run was skipped; its hooks still ran and saw the given tensor
    assert len(runs) == 1 and outputs[1] is marker
    assert relu.__dict__["forward"].__func__ is counted  # an instance forward is put back
    del relu.forward
    tiny_resnet.fail = True
    with (
        pytest.raises(RuntimeError, match="forced"),
        precomputed_output(tiny_resnet, "layer1", marker, 1, skip=True),
    ):
        tiny_resnet(images)
    assert "forward" not in tiny_resnet.layer1.__dict__ and "forward" not in relu.__dict__
    no_hooks_left(tiny_resnet)


@pytest.mark.parametrize(("layer", "pure"), [("layer1.relu", False), ("layer1", True)])
def test_precomputed_output_reports_whether_the_run_is_pure(layer, pure, tiny_resnet, images):
    # layer1.relu is an in-place ReLU: its output is its input, so its run cannot be skipped
    module = tiny_resnet.get_submodule(layer)
    runs, counted = count_forwards(module)
    module.forward = counted.__get__(module)
    with torch.no_grad():
        expected = tiny_resnet(images)
        with precomputed_output(tiny_resnet, layer, torch.zeros(4, 8, 16, 16), 1, skip=False) as p:
            tiny_resnet(images)
    assert p == [pure] and len(runs) == (2 if layer == "layer1" else 4)
    del module.forward
    assert torch.equal(tiny_resnet(images), expected)


@pytest.mark.parametrize("layer", ["layer1.relu", "layer1", "layer2.conv1"])
def test_ablationcam_skipping_gives_the_hooked_result(layer, tiny_resnet, images):
    # the same weights as replacing the layer's output after running it (the former way)
    method = AblationCAM(tiny_resnet, layer=layer, channel_batch=3)
    result = method(images)
    activations = layer_forward(tiny_resnet, layer, images, result.targets)
    score = activations.logits.gather(1, result.targets[:, None])[:, 0]
    b, c = activations.activations.shape[:2]
    weights = torch.zeros(b, c)
    for k in range(c):
        ablated = activations.activations.clone()
        ablated[:, k] = 0
        with (
            torch.no_grad(),
            replaced_output(tiny_resnet, layer, lambda _, a=ablated: a, run=activations.runs),
        ):
            logits = tiny_resnet(images)
        weights[:, k] = (score - logits.gather(1, result.targets[:, None])[:, 0]) / score
    weights[activations.activations.flatten(2).eq(0).all(dim=2)] = 0
    expected = weighted_cam(weights, activations.activations)
    torch.testing.assert_close(result.maps, expected, rtol=1e-5, atol=1e-5 * expected.amax())
