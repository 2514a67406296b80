"""Finding and checking the layer a CAM method reads, by tracing the model, never by its name."""

from __future__ import annotations

import difflib

import torch
from torch import nn

from xaibench.errors import ConfigError
from xaibench.methods.base import saliency_mode
from xaibench.methods.hooks import record_layers

_RESAMPLERS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def find_target_layer(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> str:
    """The default CAM layer: the last module to finish with a (B, C, h, w) output, h, w > 1.

    Traces one eval-mode forward of a zero image (1, 3, *input_size) with a hook on every submodule.
    Adaptive pooling layers are skipped: their output size is fixed by the layer, not by the image
    (VGG's AdaptiveAvgPool2d to 7 x 7 would otherwise be chosen, and upsample small inputs). When an
    outer module returns its last child's output unchanged (a `Sequential`), the outer one finishes
    last and is chosen: `layer4` on ResNet, `features` on VGG, DenseNet, EfficientNet and MobileNet
    (on VGG that is the output of `features.30`). A module that runs several times counts at its
    last run. Raises ConfigError when no module qualifies.
    """
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    names = [name for name, m in model.named_modules() if name and not isinstance(m, _RESAMPLERS)]
    dummy = torch.zeros(1, 3, *input_size, device=device, dtype=dtype)
    with saliency_mode(model), torch.no_grad(), record_layers(model, names) as recording:
        model(dummy)
    spatial = [
        call.name
        for call in recording.calls
        if call.shape is not None and len(call.shape) == 4 and min(call.shape[2:]) > 1
    ]
    if not spatial:
        raise ConfigError(
            f"no layer of {type(model).__name__} outputs a (B, C, h, w) map with h, w > 1 on a "
            f"{input_size[0]}x{input_size[1]} input; pass the CAM layer explicitly (layer=...)"
        )
    return spatial[-1]


def validate_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called `name`; ConfigError listing close names when there is none."""
    names = [n for n, _ in model.named_modules() if n]
    if name in names:
        return model.get_submodule(name)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"close names: {', '.join(close)}" if close else f"top-level names: {_top_level(model)}"
    raise ConfigError(f"{type(model).__name__} has no layer {name!r}; {hint}")


def _top_level(model: nn.Module) -> str:
    return ", ".join(name for name, _ in model.named_children()) or "(none)"
