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
from xaibench.methods.cam import LayerMethod, pass_groups, shares_layer_pass
from xaibench.methods.hooks import record_layers
from xaibench.methods.layers import resolve_layer, validate_layer
from xaibench.methods.polycam import PolyCAM, find_stage_layers
from xaibench.methods.support import skeleton
from xaibench.methods.tokens import FEATURE_MAP
from xaibench.models.factory import is_user_model, model_input_size, model_spec


def layer_channels(model_name: str, layer: str | None = None) -> int | None:
    """C of the map (B, C, h, w) that `layer` of the registered model `model_name` outputs at its
    last run, read by its `Layout` (a vision transformer's token sequence or grid: C of a token).

    layer None: the default CAM layer (`resolve_layer`). None when a CNN's layer does not output
    a (B, C, h, w) map. ConfigError when the model has no such layer, or no default one, and for
    a transformer's layer that outputs neither a map nor tokens (`layer_layout`).
    """
    model = skeleton(model_name)
    layer, layout = resolve_layer(model, layer)
    return layout.channels(_shapes(model, [layer])[0])


def stage_channels(model_name: str, layers: Sequence[str] | None = None) -> list[int | None]:
    """C of each of Poly-CAM's layers' outputs, in order, as `layer_channels` gives one.

    layers None: Poly-CAM's default, the output of each resolution stage (`find_stage_layers`).
    """
    model = skeleton(model_name)
    layers = find_stage_layers(model) if layers is None else list(layers)
    return [FEATURE_MAP.channels(shape) for shape in _shapes(model, layers)]


def method_passes(
    method: str, params: Mapping[str, Any], model_name: str, layer: str | None = None
) -> Passes | None:
    """The `Passes` per image of the registered `method` with settings `params` on `model_name`;
    None where the method does not know them (`SaliencyMethod.passes`).

    layer (as --layer) replaces params["layer"] for the methods that read one layer (CAM methods,
    Score-CAM, Ablation-CAM, Guided Grad-CAM), which get its channels (`layer_channels`); Poly-CAM
    gets those of its `layers` (`stage_channels`); the other methods get none (those of other
    libraries included: their counts do not depend on channels). Every method gets the model's
    input size (Occlusion's count depends on it); a model of the user's own has none here, and a
    method that needs it then raises ConfigError.
    """
    cls = METHODS.get(method)
    settings = dict(params)
    channels: int | list[int | None] | None = None
    if issubclass(cls, LayerMethod):
        settings["layer"] = layer or settings.get("layer")
        channels = layer_channels(model_name, settings["layer"])
    elif issubclass(cls, PolyCAM):
        channels = stage_channels(model_name, settings.get("layers"))
    input_size = None if is_user_model(model_name) else model_spec(model_name).input_size
    return cls.passes(settings, channels, input_size)


def shared_passes(
    methods: Mapping[str, Mapping[str, Any]], model_name: str, layer: str | None = None
) -> list[list[str]]:
    """`methods` (name -> settings) on `model_name` grouped as generate runs them: CAM methods
    reading the same layer (`layer`, else their `layer` setting, else the default CAM layer) for
    the same score share one forward and backward (`pass_groups`), the others run alone.

    The first method of a group runs the pass its `method_passes` counts; the others add none.
    """
    names = list(methods)
    layers = {n: layer or methods[n].get("layer") for n in names}
    sharing = [n for n in names if shares_layer_pass(METHODS.get(n))]
    if any(layers[n] is None for n in sharing):
        default = resolve_layer(skeleton(model_name))[0]
        layers = {n: default if read is None else read for n, read in layers.items()}
    keys = [(layers[n], METHODS.get(n).explains) if n in sharing else None for n in names]
    return [[names[i] for i in group] for group in pass_groups(keys)]


def _shapes(model: nn.Module, layers: list[str]) -> list[torch.Size | None]:
    """Each layer's output shape at its last run in one forward of a zero image (1, 3, H, W)."""
    for layer in layers:
        validate_layer(model, layer)
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dummy = torch.zeros(1, 3, *model_input_size(model), device=device)
    with saliency_mode(model), torch.no_grad(), record_layers(model, layers) as recording:
        model(dummy)
    return [recording.last(layer).shape for layer in layers]
