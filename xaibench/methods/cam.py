"""Class activation maps: Grad-CAM, and the base that CAM variants subclass.

Every CAM method reads one layer's activations A (B, C, h, w) and the gradients G = dy_c/dA of the
explained scores. `layer_pass` computes both in one forward and one backward that stops at the layer
(the part of the network below it is never backpropagated). A variant is a small subclass of
`CAMMethod` that overrides `channel_weights` (Grad-CAM++, XGrad-CAM) or `cam` (Layer-CAM), and
`explain_together` gives several CAM methods on the same layer one shared pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from xaibench.errors import ConfigError
from xaibench.methods.base import (
    METHODS,
    Explanation,
    SaliencyMethod,
    saliency_mode,
    top1_targets,
)
from xaibench.methods.hooks import autograd_enabled, gradient_input, record_layers
from xaibench.methods.layers import find_target_layer, validate_layer


@dataclass
class LayerPass:
    """activations, gradients: (B, C, h, w); logits: (B, K) clean-image logits; targets: (B,)."""

    activations: torch.Tensor
    gradients: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor


def layer_pass(
    model: nn.Module, layer: str, images: torch.Tensor, targets: torch.Tensor | None
) -> LayerPass:
    """One forward of images (B, 3, H, W) and one backward of the summed selected logits to `layer`.

    targets (B,) or None (= top-1 of this forward). The backward runs only from the logits down to
    the layer's output (through its gradient edge), which costs a fraction of a backward to the
    input. Call it inside `saliency_mode(model)` so that no weight gradient is computed.
    """
    with autograd_enabled(), record_layers(model, [layer], activations=True, edges=True) as rec:
        logits = model(gradient_input(images))
        targets = top1_targets(logits, targets)
        call = rec.last(layer)
        if call.activation.ndim != 4:
            raise ConfigError(
                f"layer {layer!r} outputs shape {tuple(call.shape)}, not (B, C, h, w); "
                "pick a convolutional layer"
            )
        score = logits.gather(1, targets[:, None]).sum()
        (gradients,) = torch.autograd.grad(score, inputs=[call.edge])
    return LayerPass(call.activation, gradients, logits.detach(), targets)


class CAMMethod(SaliencyMethod):
    """A map from one layer's activations and gradients, at the layer's resolution (B, h, w).

    `layer` is a module name (`model.get_submodule(layer)`); None picks `find_target_layer(model)`.
    The resolved name is recorded in `params`. A module that runs several times in one forward (an
    activation module shared by the stem and the head) is read at its last run. Subclasses
    override `channel_weights` or `cam`.
    """

    def __init__(self, model: nn.Module, layer: str | None = None):
        layer = find_target_layer(model) if layer is None else layer
        validate_layer(model, layer)
        super().__init__(model, layer=layer)
        self.layer = layer

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        result = layer_pass(self.model, self.layer, images, targets)
        maps = self.cam(result.activations, result.gradients)
        return Explanation(maps, result.targets, result.logits)

    def cam(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w), (B, C, h, w) -> (B, h, w) float32: ReLU(sum_c w_c A_c)."""
        weights = self.channel_weights(activations, gradients)
        return torch.relu(torch.einsum("bc,bchw->bhw", weights, activations)).float()

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w), (B, C, h, w) -> (B, C): the weight of each channel's activation map."""
        raise NotImplementedError(f"{type(self).__name__} must override channel_weights or cam")


@METHODS.register("gradcam", help="Grad-CAM: layer activations weighted by mean gradients, ReLU")
class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al., 2017): w_c = mean over (h, w) of dy_c/dA_c; map (B, h, w)."""

    name = "gradcam"

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.mean(dim=(2, 3))


def explain_together(
    methods: Sequence[CAMMethod], images: torch.Tensor, targets: torch.Tensor | None = None
) -> list[Explanation]:
    """The explanations of several CAM methods on one model and layer from one shared pass.

    images (B, 3, H, W), targets (B,) or None. Equals calling each method on its own.
    """
    if not methods:
        return []
    model, layer = methods[0].model, methods[0].layer
    if any(m.model is not model or m.layer != layer for m in methods):
        raise ConfigError("explain_together needs CAM methods on the same model and layer")
    with saliency_mode(model):
        result = layer_pass(model, layer, images, targets)
    return [
        Explanation(m.cam(result.activations, result.gradients), result.targets, result.logits)
        for m in methods
    ]
