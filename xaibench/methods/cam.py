"""Class activation maps: the methods that read one layer's activations (and gradients).

Every CAM method reads one layer's activations A (B, C, h, w); the gradient-based ones also read
G = dy_c/dA for the explained scores y_c. `layer_pass` computes both in one forward and one backward
that stops at the layer (the part of the network below it is never backpropagated); `layer_forward`
is the forward alone, for the methods that need no gradient (Eigen-CAM, and Score-CAM and
Ablation-CAM in `cam_perturbation`). A variant is a small subclass of `CAMMethod` that overrides
`channel_weights` (Grad-CAM, Grad-CAM++, XGrad-CAM) or `cam` (Layer-CAM, HiResCAM, Eigen-CAM), and
`explain_together` gives several CAM methods on the same layer one shared pass.

A vision transformer's layers output tokens, not maps; `LayerMethod` reads them through the
layer's `Layout` (`xaibench.methods.tokens`): ViT's and DeiT's sequences (B, N, C) without their
class and distillation tokens, laid on the patch grid, and Swin's grids (B, h, w, C), as
(B, C, h, w). Activations and gradients are read alike, so every variant runs on them unchanged.

Every map is returned at the layer's resolution (B, h, w), after a ReLU as in Grad-CAM; callers
resize it to the image when they need to.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.core.precision import full_precision
from xaibench.methods.base import (
    METHODS,
    Explanation,
    Passes,
    SaliencyMethod,
    saliency_mode,
    top1_targets,
)
from xaibench.methods.hooks import autograd_enabled, backward, gradient_input, record_layers
from xaibench.methods.layers import resolve_layer
from xaibench.methods.targets import ScoreKind, explained_score
from xaibench.methods.tokens import FEATURE_MAP, Layout


@dataclass
class LayerPass:
    """activations: (B, C, h, w); gradients: (B, C, h, w), None after `layer_forward`;
    logits: (B, K) clean-image logits; targets: (B,); runs: how many times the layer ran in the
    forward (the activations are those of its last run); output: the layer's output itself, the
    activations in its own layout (the same tensor for a (B, C, h, w) layer; `Layout`).
    """

    activations: torch.Tensor
    gradients: torch.Tensor | None
    logits: torch.Tensor
    targets: torch.Tensor
    runs: int = 1
    output: torch.Tensor | None = None


def layer_pass(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    kind: ScoreKind = "logit",
    layout: Layout = FEATURE_MAP,
) -> LayerPass:
    """One forward of images (B, 3, H, W) and one backward of the summed explained scores (`kind`,
    `explained_score`) to `layer`, whose output and its gradient are read as maps by `layout`.

    targets (B,) or None (= top-1 of this forward). The backward runs only from the scores down to
    the layer's output (through its gradient edge), which costs a fraction of a backward to the
    input. Call it inside `saliency_mode(model)` so that no weight gradient is computed.
    """
    with (
        autograd_enabled(),
        record_layers(model, [layer], activations=True, edges=True) as rec,
        record_layers(model, layout.watched()) as grids,
    ):
        logits = model(gradient_input(images))
        targets = top1_targets(logits, targets)
        call = rec.last(layer)
        grid = layout.grid(layer, call.shape, grids.calls)
        score = explained_score(logits, targets, kind).sum()
        (gradients,) = backward(score, [call.edge])
    runs = sum(c.name == layer for c in rec.calls)
    return LayerPass(
        layout.to_map(call.activation, grid),
        layout.to_map(full_precision(gradients), grid),
        logits.detach(),
        targets,
        runs,
        call.activation,
    )


def layer_forward(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    targets: torch.Tensor | None,
    layout: Layout = FEATURE_MAP,
) -> LayerPass:
    """One forward of images (B, 3, H, W) without autograd, keeping `layer`'s activations, read as
    maps by `layout`.

    targets (B,) or None (= top-1 of this forward). `gradients` is None.
    """
    with (
        torch.no_grad(),
        record_layers(model, [layer], activations=True) as rec,
        record_layers(model, layout.watched()) as grids,
    ):
        logits = model(images)
    call = rec.last(layer)
    grid = layout.grid(layer, call.shape, grids.calls)
    runs = sum(c.name == layer for c in rec.calls)
    activations = layout.to_map(call.activation, grid)
    return LayerPass(
        activations, None, logits, top1_targets(logits, targets), runs, call.activation
    )


def weighted_cam(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """(B, C), (B, C, h, w) -> (B, h, w) float32: ReLU(sum_c w_c A_c)."""
    return torch.relu(torch.einsum("bc,bchw->bhw", weights, activations)).float()


class LayerMethod(SaliencyMethod):
    """A method that reads the output of one layer of the model, as a map (B, C, h, w).

    `layer` is a module name (`model.get_submodule(layer)`); None picks the default
    (`default_layer`). The resolved name is recorded in `params`, with the subclass's own
    settings; `layout` reads its output as a map: a vision transformer's tokens are laid on their
    patch grid (`resolve_layer`). A module that runs several times in one forward (an activation
    module shared by the stem and the head) is read at its last run.
    """

    requires = ("cam_layer",)

    def __init__(self, model: nn.Module, layer: str | None = None, **params: Any):
        layer, self.layout = resolve_layer(model, layer)
        super().__init__(model, layer=layer, **params)
        self.layer = layer


class CAMMethod(LayerMethod):
    """A map from one layer's activations and gradients, at the layer's resolution (B, h, w).

    Subclasses override `channel_weights` or `cam`; `explain_together` calls `cam` on a shared
    `layer_pass`. The gradients are those of the explained logit y_c, as published. Passes per
    image: one forward and one backward that stops at the layer (the default `passes`); the CAM
    methods explained together on one layer share them.
    """

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        result = layer_pass(self.model, self.layer, images, targets, self.explains, self.layout)
        maps = self.cam(result.activations, result.gradients)
        return Explanation(maps, result.targets, result.logits)

    def cam(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w), (B, C, h, w) -> (B, h, w) float32: ReLU(sum_c w_c A_c)."""
        return weighted_cam(self.channel_weights(activations, gradients), activations)

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w), (B, C, h, w) -> (B, C): the weight of each channel's activation map."""
        raise NotImplementedError(f"{type(self).__name__} must override channel_weights or cam")


@METHODS.register("gradcam", help="Grad-CAM: layer activations weighted by mean gradients, ReLU")
class GradCAM(CAMMethod):
    """Grad-CAM (Selvaraju et al., 2017): w_c = mean over (h, w) of dy_c/dA_c; map (B, h, w)."""

    name = "gradcam"

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return gradients.mean(dim=(2, 3))


@METHODS.register(
    "gradcampp", help="Grad-CAM++: channels weighted by positive gradients with pixel-wise alphas"
)
class GradCAMPlusPlus(CAMMethod):
    """Grad-CAM++ (Chattopadhyay et al., 2018): w_c = sum_ij alpha_ij^c ReLU(G_ij^c); (B, h, w).

    alpha = G^2 / (2 G^2 + sum_ab A_ab G^3), the paper's closed form for the explained score
    passed through exp: its second and third derivatives are then powers of the first (exact where
    the network above the layer is piecewise linear), and the factor exp(y_c) cancels in alpha and
    only scales the map, so G is the gradient of the score itself. Where the denominator is 0 the
    paper's alpha is 0/0; it is set to 0 there (that pixel's gradient is 0, so it adds nothing).
    """

    name = "gradcampp"

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        squared = gradients.square()
        total = activations.sum(dim=(2, 3), keepdim=True)
        denominator = 2 * squared + total * squared * gradients
        alpha = torch.where(denominator != 0, squared / denominator, 0.0)
        return (alpha * torch.relu(gradients)).sum(dim=(2, 3))


@METHODS.register(
    "xgradcam", help="XGrad-CAM: gradients averaged with the activations as weights, ReLU"
)
class XGradCAM(CAMMethod):
    """XGrad-CAM (Fu et al., 2020): w_c = sum_ij (A_ij^c / sum_ab A_ab^c) G_ij^c; map (B, h, w).

    A channel whose activations sum to 0 gets weight 0 (the paper's ratio is undefined there; after
    a ReLU such a channel is all zeros and adds nothing to the map anyway).
    """

    name = "xgradcam"

    def channel_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        total = activations.sum(dim=(2, 3))
        weighted = (activations * gradients).sum(dim=(2, 3))
        return torch.where(total != 0, weighted / total, 0.0)


@METHODS.register(
    "layercam", help="Layer-CAM: activations weighted pixel-wise by positive gradients"
)
class LayerCAM(CAMMethod):
    """Layer-CAM (Jiang et al., 2021): ReLU(sum_c ReLU(G^c) * A^c), pixel-wise; map (B, h, w).

    One layer per method object; the paper's fusion of several layers is left to the caller.
    """

    name = "layercam"

    def cam(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return torch.relu((torch.relu(gradients) * activations).sum(dim=1)).float()


@METHODS.register("hirescam", help="HiResCAM: activations times gradients, summed over channels")
class HiResCAM(CAMMethod):
    """HiResCAM (Draelos and Carin, 2020): ReLU(sum_c G^c * A^c), pixel-wise; map (B, h, w).

    The paper's map is the signed sum; as for Grad-CAM, only its positive part is kept, so that
    every CAM map in a table is non-negative.
    """

    name = "hirescam"

    def cam(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return torch.relu((gradients * activations).sum(dim=1)).float()


@METHODS.register(
    "eigencam", help="Eigen-CAM: first principal component of the activations (class-agnostic)"
)
class EigenCAM(CAMMethod):
    """Eigen-CAM (Muhammad and Yeasin, 2020): the activations projected on their first principal axis.

    Each image's activations, as an (h*w, C) matrix with one row per position, are centred over the
    positions and decomposed by one batched SVD; the map is the first left singular vector times
    its singular value, i.e. each position's coordinate on the first principal axis, then ReLU.
    The map does not depend on the target class, and a call runs the forward only (no backward).

    Sign convention: an SVD fixes a singular vector only up to sign. The axis is oriented so that its
    channel weights sum to a positive number, which is the same as making the map correlate
    positively with the channel-summed activations: positions where the layer responds strongly
    come out high. (The paper does not fix the sign; pytorch-grad-cam keeps whatever sign its SVD
    returns, so its map is ours or the ReLU of our map's negative, image by image.)
    """

    name = "eigencam"
    uses_target = False
    per_image = Passes(1, 0)  # one forward (`layer_forward`), no backward

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        result = layer_forward(self.model, self.layer, images, targets, self.layout)
        return Explanation(self.cam(result.activations, None), result.targets, result.logits)

    def cam(self, activations: torch.Tensor, gradients: torch.Tensor | None) -> torch.Tensor:
        """(B, C, h, w), ignored -> (B, h, w) float32."""
        b, _, h, w = activations.shape
        positions = activations.flatten(2).transpose(1, 2).float()
        positions = positions - positions.mean(dim=1, keepdim=True)
        u, s, _ = torch.linalg.svd(positions, full_matrices=False)
        projection = u[..., 0] * s[..., :1]
        # <projection, channel sums> = s_1^2 * sum_c v_1c: its sign is the axis's orientation
        orientation = (projection * positions.sum(dim=2)).sum(dim=1)
        projection = torch.where(orientation[:, None] < 0, -projection, projection)
        return torch.relu(projection).view(b, h, w)


def shares_layer_pass(method: type[SaliencyMethod]) -> bool:
    """Whether `method`'s map comes from `layer_pass` alone (a CAM method that does not override
    `explain`), so that such methods reading one layer for one score can share a pass
    (`explain_together`)."""
    return issubclass(method, CAMMethod) and method.explain is CAMMethod.explain


def pass_groups(keys: Sequence[Hashable | None]) -> list[list[int]]:
    """Positions of `keys` grouped by equal key, groups in order of first appearance; a None key
    (a method that shares no pass) is a group of its own.

    The key of a method that `shares_layer_pass` is (layer, explained score): `(m.layer,
    m.explains)`.
    """
    groups: list[list[int]] = []
    by_key: dict[Hashable, list[int]] = {}
    for position, key in enumerate(keys):
        if key is None:
            groups.append([position])
        elif key in by_key:
            by_key[key].append(position)
        else:
            by_key[key] = [position]
            groups.append(by_key[key])
    return groups


def explain_together(
    methods: Sequence[CAMMethod], images: torch.Tensor, targets: torch.Tensor | None = None
) -> list[Explanation]:
    """The explanations of several CAM methods on one model and layer from one shared pass.

    images (B, 3, H, W), targets (B,) or None. Equals calling each method on its own.
    """
    if not methods:
        return []
    model, layer, kind = methods[0].model, methods[0].layer, methods[0].explains
    if any(m.model is not model or m.layer != layer or m.explains != kind for m in methods):
        raise ConfigError(
            "explain_together needs CAM methods on the same model and layer, explaining one score"
        )
    with saliency_mode(model):
        result = layer_pass(model, layer, images, targets, kind, methods[0].layout)
    return [
        Explanation(m.cam(result.activations, result.gradients), result.targets, result.logits)
        for m in methods
    ]
