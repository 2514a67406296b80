"""FullGrad (Srinivas and Fleuret, 2019): input-gradient and bias-gradient maps, summed.

For a network made of linear pieces the class score is exactly
    y_c(x) = <x, dy_c/dx> + sum over bias-carrying layers l of <b_l, dy_c/dz_l>
(the full-gradient decomposition), with z_l the output the bias b_l is added to. FullGrad turns the
input term and each convolutional layer's bias term into a map, normalises each map on its own and
adds them up at the input resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xaibench.methods.base import METHODS, Explanation, SaliencyMethod, top1_targets
from xaibench.methods.hooks import (
    LayerCall,
    autograd_enabled,
    backward,
    gradient_input,
    record_layers,
)
from xaibench.methods.targets import explained_score
from xaibench.methods.tgrad import (
    InputShiftTerm,
    channel_bias,
    effective_biases,
    input_terms,
)

EPS = 1e-6
"""Added to a term's maximum before dividing by it (the reference code's value)."""


@dataclass
class FullGradTerms:
    """The decomposition of a FullGrad call (its explanation's extras["terms"]).

    names: "input", "input_shift" where the model shifts its input (`input_terms`), then the
    bias-carrying layers in forward order (K entries);
    totals: (B, K) each term's signed sum, <x, dy_c/dx>, <t, dy_c/dx'> and <b_l, dy_c/dz_l>;
    scores: (B,) the explained scores y_c.
    """

    names: list[str]
    totals: torch.Tensor
    scores: torch.Tensor

    @property
    def completeness(self) -> torch.Tensor:
        """(B,) sum of the terms over the score: 1.0 where the decomposition is complete."""
        return self.totals.sum(dim=1) / self.scores


@METHODS.register(
    "fullgrad", help="FullGrad: normalised |input x gradient| and |bias x gradient| maps"
)
class FullGrad(SaliencyMethod):
    """FullGrad saliency (B, H, W) at the input resolution, one forward + one backward per batch.

    Terms: x * dy_c/dx, and b_l * dy_c/dz_l for every Conv2d with a bias, every eval-mode
    batch-norm (b_l its effective bias, `effective_biases`) and every Linear; y_c is the explained
    logit, as published. Each term T (B, C, h, w) is post-processed as in the reference code: |T|, minus its
    minimum and divided by its maximum (+ EPS), both taken per image over all of the term's
    channels and positions; then summed over channels and resized bilinearly to (H, W) with
    align_corners=True (the reference code's resize). The map is the sum over the input term and
    every layer's term, not rescaled.

    A model that maps its input as x' = s * x + t inside `forward` (torchvision's pretrained
    GoogLeNet and Inception v3, `input_shift`) has one more bias term, "input_shift",
    t * dy_c/dx' (B, C, H, W), post-processed and summed like the others: the shift is the bias
    of no layer (the reference code's models have no such transform, so it has no such term;
    `shift_term=False` leaves it out as the reference code would).

    Linear layers' biases enter the decomposition but not the map, as in the reference code (their
    terms have no spatial extent). The explanation's extras["terms"] (`FullGradTerms`) hold the
    terms' totals, and their `completeness` the share of each score they explain: 1 on a network
    of ReLUs, max-pooling, convolutions, eval batch-norm and linear layers.

    pytorch-grad-cam's FullGrad min-max normalises each channel of a term on its own rather than
    the whole term, which gives different maps (tests show it); this follows the paper's code.
    """

    name = "fullgrad"
    requires = ("bias_terms",)

    def __init__(self, model: nn.Module, shift_term: bool = True):
        self.shift = InputShiftTerm(self.name, model, shift_term)
        super().__init__(model, **self.shift.params)

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        biases = effective_biases(self.model)
        biases.update(
            (name, module.bias.detach())
            for name, module in self.model.named_modules()
            if isinstance(module, nn.Linear) and module.bias is not None
        )

        def reduce(call: LayerCall, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
            term = grad * channel_bias(biases[call.name], grad)
            total = term.flatten(1).sum(dim=1)
            return (postprocess(term) if grad.ndim == 4 else None), total

        hooks = record_layers(self.model, list(biases), reduce_gradient=reduce)
        with autograd_enabled(), hooks as rec:
            x = gradient_input(images)
            logits = self.model(x)
            targets = top1_targets(logits, targets)
            score = explained_score(logits, targets, self.explains)
            (grad,) = backward(score.sum(), [x])
        inputs = input_terms(x.detach(), grad, self.shift.ratio)
        maps = [postprocess(term) for term in inputs.values()]
        totals = [term.flatten(1).sum(dim=1) for term in inputs.values()]
        for call in rec.calls:
            if call.reduced is None:  # the backward never reached this layer: a zero term
                totals.append(score.new_zeros(len(images)))
                continue
            layer_map, total = call.reduced
            totals.append(total)
            if layer_map is not None:
                maps.append(layer_map)
        names = [*inputs, *(call.name for call in rec.calls)]
        terms = FullGradTerms(names, torch.stack(totals, dim=1), score.detach())
        saliency = sum_resized(maps, tuple(images.shape[2:]))
        return Explanation(saliency.float(), targets, logits.detach(), {"terms": terms})


def postprocess(term: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): |term| min-max normalised per image over (C, h, w), channel sum."""
    magnitude = term.abs()
    flat = magnitude.flatten(1)
    low = flat.amin(dim=1)[:, None, None, None]
    high = flat.amax(dim=1)[:, None, None, None]
    return ((magnitude - low) / (high - low + EPS)).sum(dim=1)


def sum_resized(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Maps (B, h_l, w_l) -> (B, H, W): the sum of the maps resized bilinearly (align_corners=True).

    Resizing is linear, so maps of one resolution are summed first and resized once.
    """
    by_size: dict[tuple[int, int], torch.Tensor] = {}
    for layer_map in maps:
        key = tuple(layer_map.shape[1:])
        by_size[key] = by_size[key] + layer_map if key in by_size else layer_map
    saliency = by_size.pop(tuple(size), maps[0].new_zeros(maps[0].shape[0], *size))
    for summed in by_size.values():
        resized = F.interpolate(summed[:, None], size=size, mode="bilinear", align_corners=True)
        saliency = saliency + resized[:, 0]
    return saliency
