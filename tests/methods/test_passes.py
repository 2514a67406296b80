"""Every method's declared passes (`SaliencyMethod.passes`) against the passes it really runs.

The reference counts at the model's top module, which every method calls (none runs submodules
on their own; Ablation-CAM swaps its layer's forward inside a call of the top module):

- forwards: a forward hook on the top module adds the batch size of each call, so a call on a
  batch of masked or noisy copies counts one forward per copy;
- backwards: the same hook puts a tensor hook on each output that requires grad, which adds the
  output's batch size each time autograd sends a gradient into it. Every backward a method runs
  starts from scores computed from these logits, so it is seen whether it goes on to the input or
  stops at a layer (Grad-CAM), and once per autograd call where one graph is backpropagated twice
  (Guided Grad-CAM). Forwards without autograd give outputs that do not require grad: no count.

Both totals are of images; a call explains a batch of BATCH images, so they are compared with
BATCH times the declared count per image, less what the declaration knowingly over-counts
(`expected_forwards`).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
from torch import nn
from vit_helpers import torchvision_vit

from xaibench.core.errors import ConfigError, UnknownNameError
from xaibench.methods import METHODS, Passes, PolyCAM
from xaibench.methods.cam import LayerMethod
from xaibench.methods.cost import layer_channels, method_passes, shared_passes, stage_channels
from xaibench.models.factory import load_model, mark_input_size
from xaibench.pipelines.generate import shared_pass_groups

BATCH = 2
SIDE = 32
NON_DEFAULT = [
    ("rise", {"masks": 6, "mask_batch": 4}),
    ("occlusion", {"window": [12, 9], "stride": [5, 4], "window_batch": 3}),
    ("smoothgrad", {"samples": 3, "sample_batch": 2}),
    ("smoothgrad_sq", {"samples": 2, "base": "guidedgradcam"}),
    ("vargrad", {"samples": 3, "base": "gradinput"}),
    ("vargrad", {"samples": 2, "base": "intgrad", "base_params": {"steps": 3}}),
    ("intgrad", {"steps": 5, "step_batch": 3}),
    ("scorecam", {"layer": "layer1", "channel_batch": 5}),
    ("ablationcam", {"layer": "layer1", "channel_batch": 3}),
    ("polycam", {"layers": ["layer1", "layer2"]}),
    ("polycam_minus", {"layers": ["layer2"], "channel_batch": 7}),
    ("polycam_pm", {"layers": ["stem", "layer2"]}),
    ("gradcam", {"layer": "layer1"}),
    ("rollout", {"head_fusion": "max", "discard_ratio": 0.5}),
    ("guidedgradcam", {"layer": "layer1"}),
]
"""Settings that change the count (samples, steps, masks, layers, windows) or the batching (which
must not)."""
CASES = [(name, {}) for name in METHODS.names()] + NON_DEFAULT
SKIPPED_CHANNELS = {
    "scorecam": lambda flat: flat.amax(dim=2) == flat.amin(dim=2),
    "ablationcam": lambda flat: flat.eq(0).all(dim=2),
}
"""(B, C, h*w) activations -> (B, C) bool: the pairs the method scores without a forward."""


@dataclass
class Counts:
    """Images through the model's top module, forwards and backwards."""

    forwards: int = 0
    backwards: int = 0


@contextmanager
def counting(model: nn.Module) -> Iterator[Counts]:
    counts = Counts()

    def on_backward(grad: torch.Tensor) -> None:
        counts.backwards += grad.shape[0]

    def on_forward(module: nn.Module, args: object, output: torch.Tensor) -> None:
        counts.forwards += output.shape[0]
        if output.requires_grad:
            output.register_hook(on_backward)

    handle = model.register_forward_hook(on_forward)
    try:
        yield counts
    finally:
        handle.remove()


@pytest.fixture
def net(tiny_resnet):
    """TinyResNet traced at SIDE: default CAM layer `layer2` (16 channels), Poly-CAM's layers
    `stem.2`, `layer1`, `layer2` (8, 8, 16)."""
    return mark_input_size(tiny_resnet, (SIDE, SIDE))


def layer_outputs(model: nn.Module, layers: list[str], images: torch.Tensor) -> list[torch.Tensor]:
    """The output of each layer at its last run in a forward of images (own hooks)."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(layer).register_forward_hook(
            lambda _m, _a, out, layer=layer: outputs.__setitem__(layer, out.detach().clone())
        )
        for layer in layers
    ]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return [outputs[layer] for layer in layers]


def expected_forwards(name: str, method, declared: Passes, images: torch.Tensor) -> range:
    """The images the method's forwards should total on `images`: BATCH x the declaration, less
    what it over-counts by design (its docstring says so)."""
    total = len(images) * declared.forwards
    if name in SKIPPED_CHANNELS:  # data-dependent: count the pairs the method skips
        (activations,) = layer_outputs(method.model, [method.layer], images)
        skipped = int(SKIPPED_CHANNELS[name](activations.flatten(2)).sum())
        return range(total - skipped, total - skipped + 1)
    if name == "intgrad":  # the baseline is one image run once per call, counted once per image
        return range(total - len(images) + 1, total - len(images) + 2)
    if method.params.get("base") == "intgrad":  # once per base call, which the chunking decides
        return range(total - len(images) * method.samples + 1, total + 1)
    return range(total, total + 1)


def channels_of(method, images: torch.Tensor) -> int | list[int] | None:
    """The channels a method's `passes` needs, read off its model's outputs."""
    if isinstance(method, PolyCAM):
        return [out.shape[1] for out in layer_outputs(method.model, method.layers, images)]
    if isinstance(method, LayerMethod):
        return layer_outputs(method.model, [method.layer], images)[0].shape[1]
    return None


def counted_call(name: str, params: dict, model: nn.Module) -> tuple[Counts, range, Passes]:
    """Call the method on BATCH images: the counts, the forwards expected, the declared passes."""
    images = torch.randn(BATCH, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))
    method = METHODS.get(name)(model, **params)
    declared = type(method).passes(params, channels_of(method, images), (SIDE, SIDE))
    with counting(model) as counts:
        method(images, torch.tensor([1, 3]))
    return counts, expected_forwards(name, method, declared, images), declared


@pytest.mark.parametrize(("name", "params"), CASES, ids=[f"{n}{p or ''}" for n, p in CASES])
def test_declared_passes_are_the_passes_run(name, params, net):
    if "class_attention" in METHODS.get(name).requires:
        net = torchvision_vit(image_size=SIDE)
    counts, forwards, declared = counted_call(name, params, net)
    assert counts.forwards in forwards
    assert counts.backwards == BATCH * declared.backwards


@pytest.mark.parametrize("name", sorted(SKIPPED_CHANNELS))
def test_a_channel_known_without_a_forward_is_not_run(name, net):
    """A dead channel (all 0, so constant too) costs no forward: at least one fewer per image."""
    with torch.no_grad():
        net.down[1].weight[0] = 0
        net.down[1].bias[0] = -1
    counts, forwards, declared = counted_call(name, {"layer": "down"}, net)
    assert declared == Passes(17, 0)
    assert counts.forwards <= BATCH * (declared.forwards - 1)
    assert counts.forwards in forwards


@pytest.mark.parametrize("name", ["random", "centre", "constant"])
def test_a_baseline_without_targets_runs_one_forward_for_them(name, net):
    images = torch.randn(BATCH, 3, SIDE, SIDE)
    with counting(net) as counts:
        METHODS.get(name)(net)(images)
    assert (counts.forwards, counts.backwards) == (BATCH, 0)
    assert METHODS.get(name).passes({}) == Passes(0, 0)


def test_passes_add_and_scale():
    assert Passes(1, 0) + 3 * Passes(2, 1) == Passes(7, 3) == Passes(1, 0) + Passes(2, 1) * 3


def test_missing_settings_take_the_constructors_defaults():
    assert METHODS.get("rise").passes({}) == Passes(4001, 0)
    assert METHODS.get("intgrad").passes({"steps": 8}) == Passes(10, 8)
    assert METHODS.get("smoothgrad").passes({"base": "guidedgradcam"}) == Passes(51, 100)
    assert METHODS.get("fullgrad").full_settings({}) == {"shift_term": True}


def test_passes_refuse_what_the_constructor_refuses():
    with pytest.raises(ConfigError, match="no setting 'mask'"):
        METHODS.get("rise").passes({"mask": 10})
    with pytest.raises(ConfigError, match="samples"):
        METHODS.get("vargrad").passes({"samples": 0})
    with pytest.raises(ConfigError, match="not a gradient-type method"):
        METHODS.get("smoothgrad").passes({"base": "rise"})


def test_channel_counts_are_required_where_the_passes_depend_on_them():
    for name in ("scorecam", "ablationcam"):
        with pytest.raises(ConfigError, match="give channels"):
            METHODS.get(name).passes({})
        assert METHODS.get(name).passes({}, 10) == Passes(11, 0)
    with pytest.raises(ConfigError, match="give channels"):
        METHODS.get("polycam").passes({}, 16)
    with pytest.raises(ConfigError, match=r"each of its layers \(2\), got 1"):
        METHODS.get("polycam").passes({"layers": ["a", "b"]}, [16])
    assert METHODS.get("polycam_pm").passes({}, [3, 4]) == Passes(15, 0)


def test_layer_channels_come_from_the_architecture_without_weights():
    assert layer_channels("resnet50") == 2048
    assert layer_channels("resnet50", "layer3") == 1024
    assert layer_channels("resnet50", "fc") is None
    assert layer_channels("vgg16") == 512
    assert stage_channels("resnet50") == [64, 256, 512, 1024, 2048]
    assert stage_channels("resnet50", ["layer1", "layer2"]) == [256, 512]
    with pytest.raises(ConfigError, match="no layer 'layer9'"):
        layer_channels("resnet50", "layer9")
    assert layer_channels("vit_b_16") == 768  # the tokens of the last attention's input
    assert layer_channels("swin_t") == 768


def test_method_passes_on_a_registered_model():
    assert method_passes("scorecam", {}, "resnet50") == Passes(2049, 0)
    assert method_passes("ablationcam", {"layer": "layer2"}, "resnet50", "layer3") == Passes(
        1025, 0
    )
    assert method_passes("polycam_pm", {}, "resnet50") == Passes(1 + 2 * 3904, 0)
    assert method_passes("polycam", {"layers": ["layer4"]}, "resnet50") == Passes(2049, 0)
    assert method_passes("gradcam", {}, "resnet50") == Passes(1, 1)
    assert method_passes("intgrad", {"steps": 4}, "vit_b_16") == Passes(6, 4)
    assert method_passes("scorecam", {}, "vit_b_16") == Passes(769, 0)
    assert method_passes("rollout", {}, "vit_b_16") == Passes(1, 0)
    assert method_passes("attn_grad", {}, "vit_b_16") == Passes(1, 1)
    with pytest.raises(UnknownNameError):
        method_passes("gradcam", {}, "resnet5")


def test_the_planned_shared_passes_are_those_generate_runs():
    settings = {
        "gradcam": {},
        "tgrad": {},
        "gradcampp": {},
        "layercam": {"layer": "layer3"},
        "xgradcam": {},
        "eigencam": {},
        "hirescam": {"layer": "layer3"},
    }
    planned = shared_passes(settings, "resnet18")
    assert planned == [
        ["gradcam", "gradcampp", "xgradcam"],
        ["tgrad"],
        ["layercam", "hirescam"],
        ["eigencam"],  # its own explain: no gradient, no shared pass
    ]
    model = load_model("resnet18", "none").model
    built = [METHODS.get(name)(model, **params) for name, params in settings.items()]
    names = list(settings)
    assert planned == [[names[i] for i in group] for group in shared_pass_groups(built)]
