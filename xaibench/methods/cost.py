"""What saliency methods cost on a registered model, read off its structure without weights.

The model is built on the meta device (`skeleton`: no weights are allocated) and traced with a
zero image at its input size, which gives the channels C of layers' outputs (B, C, h, w);
`method_passes` turns them into a method's `Passes` per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from xaibench.methods.base import METHODS, Passes, saliency_mode
from xaibench.methods.cam import LayerMethod
from xaibench.methods.hooks import record_layers
from xaibench.methods.layers import find_target_layer, validate_layer
from xaibench.methods.polycam import PolyCAM, find_stage_layers
from xaibench.methods.support import skeleton
from xaibench.models.factory import MODELS, model_input_size


def layer_channels(model_name: str, layer: str | None = None) -> int | None:
    """C of the output (B, C, h, w) of `layer` of the registered model `model_name` (its last run).

    layer None: the default CAM layer (`find_target_layer`). None when the layer's output is not
    a (B, C, h, w) map. ConfigError when the model has no such layer, or no default one (a vision
    transformer).
    """
    model = skeleton(model_name)
    return _channels(model, [find_target_layer(model) if layer is None else layer])[0]


def stage_channels(model_name: str, layers: Sequence[str] | None = None) -> list[int | None]:
    """C of each of Poly-CAM's layers' outputs, in order, as `layer_channels` gives one.

    layers None: Poly-CAM's default, the output of each resolution stage (`find_stage_layers`).
    """
    model = skeleton(model_name)
    return _channels(model, find_stage_layers(model) if layers is None else list(layers))


def method_passes(
    method: str, params: Mapping[str, Any], model_name: str, layer: str | None = None
) -> Passes:
    """The `Passes` per image of the registered `method` with settings `params` on `model_name`.

    layer (as --layer) replaces params["layer"] for the methods that read one layer (CAM methods,
    Score-CAM, Ablation-CAM, Guided Grad-CAM), which get its channels (`layer_channels`); Poly-CAM
    gets those of its `layers` (`stage_channels`); the other methods get none. Every method gets
    the model's registered input size (Occlusion's count depends on it); a model that is not
    registered has none, and a method that needs it then raises ConfigError.
    """
    cls = METHODS.get(method)
    settings = dict(params)
    channels: int | list[int | None] | None = None
    if issubclass(cls, LayerMethod):
        settings["layer"] = layer or settings.get("layer")
        channels = layer_channels(model_name, settings["layer"])
    elif issubclass(cls, PolyCAM):
        channels = stage_channels(model_name, settings.get("layers"))
    input_size = MODELS.get(model_name).input_size if model_name in MODELS else None
    return cls.passes(settings, channels, input_size)


def _channels(model: nn.Module, layers: list[str]) -> list[int | None]:
    """C of each layer's output at its last run in one forward of a zero image (1, 3, H, W)."""
    for layer in layers:
        validate_layer(model, layer)
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dummy = torch.zeros(1, 3, *model_input_size(model), device=device)
    with saliency_mode(model), torch.no_grad(), record_layers(model, layers) as recording:
        model(dummy)
    shapes = [recording.last(layer).shape for layer in layers]
    return [shape[1] if shape is not None and len(shape) == 4 else None for shape in shapes]
