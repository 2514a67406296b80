"""Layer-wise activation maps: what chosen layers output for an image, from one forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from xaibench.core.choices import CHANNEL_ORDERS
from xaibench.core.errors import ConfigError
from xaibench.core.precision import tf32_settings
from xaibench.methods.base import saliency_mode
from xaibench.methods.hooks import record_layers
from xaibench.methods.layers import validate_layer


def layer_activations(
    model: nn.Module, images: torch.Tensor, layers: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Normalised images (B, 3, H, W) -> layer name -> its output (B, C, h, w) on the CPU.

    One eval-mode forward for all layers; the outputs are copied before any later in-place op
    (`ReLU(inplace=True)` after a conv) can change them. A layer whose output is not a
    (B, C, h, w) feature map is refused with its shape.
    """
    if not layers:
        raise ConfigError("give at least one layer", param="layers")
    for name in layers:
        validate_layer(model, name)
    with saliency_mode(model), torch.no_grad(), tf32_settings():
        with record_layers(model, list(dict.fromkeys(layers)), activations=True) as recording:
            model(images)
        maps = {name: recording.last(name).activation.cpu() for name in layers}
    for name, value in maps.items():
        if value.ndim != 4:
            raise ConfigError(
                f"layer {name!r} outputs shape {tuple(value.shape)}, not a feature map "
                "(B, C, h, w); pick a convolutional layer"
            )
    return maps


def choose_channels(maps: torch.Tensor, n: int, order: str = "top") -> torch.Tensor:
    """(n,) channel indices of one image's maps (C, h, w) to show: the n with the largest mean
    activation, largest first ("top"), or channels 0..n-1 ("first"); all C when n >= C."""
    if order not in CHANNEL_ORDERS:
        raise ConfigError(
            f"channel order must be one of {CHANNEL_ORDERS}, got {order!r}", param="order"
        )
    n = min(n, maps.shape[0])
    if order == "first":
        return torch.arange(n)
    return maps.float().mean(dim=(1, 2)).topk(n).indices
