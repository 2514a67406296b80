"""T-Grad (Tran, Mai, Le, Le, 2024): the score split into an input term and one term per bias.

For a network made of linear pieces the class score is exactly
    y_c(x) = <x, dy_c/dx> + sum over bias-carrying layers l of <b_l, dy_c/dz_l>
with z_l the output the bias is added to. T-Grad turns each term into a spatial map and weights it
by its share of the score. See docs/tgrad.md for the published steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.core.precision import full_precision
from xaibench.methods.base import METHODS, Explanation, SaliencyMethod, top1_targets
from xaibench.methods.hooks import (
    LayerCall,
    autograd_enabled,
    backward,
    gradient_input,
    record_layers,
)
from xaibench.methods.targets import explained_score
from xaibench.models.input_transform import input_shift

EPS = 1e-8
"""Added to each resized term map's total before dividing by it (step 5)."""


@dataclass
class TGradTerms:
    """The terms of a T-Grad call (its explanation's extras["terms"]), for inspecting what each
    layer contributes.

    names: "input", "input_shift" where the model shifts its input (`input_terms`), then the
    bias-carrying layers in forward order (K entries);
    maps: per term (B, h_l, w_l), sum over channels of max(T_l, 0), at the layer's resolution;
    weights: (B, K), each term's total divided by the image's score y_c.
    """

    names: list[str]
    maps: list[torch.Tensor]
    weights: torch.Tensor

    @property
    def completeness(self) -> torch.Tensor:
        """(B,) the share of each score the terms explain: sum of the weights; 1.0 = complete."""
        return self.weights.sum(dim=1)


BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
"""Batch-norm layers: in eval mode, with running statistics, a per-channel affine map."""


def effective_biases(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> the bias (C,) it adds to channel dim 1 of its output.

    For every Conv2d with a bias and every batch-norm layer (`BATCH_NORMS`, so BatchNorm1d on a
    (B, C) or (B, C, L) output too). An eval-mode batch-norm is the affine map
    gamma * (x - mean) / sqrt(var + eps) + beta, whose bias is beta - gamma * mean / sqrt(var + eps).
    Raises ConfigError for a batch-norm without running statistics (it normalises with batch
    statistics, which mixes images). `channel_bias(bias, like)` broadcasts a bias to an output.
    """
    biases = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Conv2d) and module.bias is not None:
                biases[name] = module.bias.detach()
            elif isinstance(module, BATCH_NORMS):
                if module.running_mean is None or module.running_var is None:
                    raise ConfigError(
                        f"{type(module).__name__} {name!r} has no running statistics "
                        "(track_running_stats=False), so it is not a fixed affine map in eval "
                        "mode; T-Grad and FullGrad need one"
                    )
                scale = torch.rsqrt(module.running_var + module.eps)
                if module.weight is not None:
                    scale = scale * module.weight
                shift = -module.running_mean * scale
                biases[name] = shift + module.bias if module.bias is not None else shift
    return biases


def _bias_sources(model: nn.Module) -> list[tuple[str, float | None, list[torch.Tensor | None]]]:
    """(name, eps, tensors) of every module `effective_biases` reads: a Conv2d's bias, a
    batch-norm's running mean and variance, weight and bias (None where it has none), and its
    batch counter, which a forward in training mode advances in place with the statistics (their
    update there bumps no version counter)."""
    sources = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.bias is not None:
            sources.append((name, None, [module.bias]))
        elif isinstance(module, BATCH_NORMS):
            tensors = [module.running_mean, module.running_var, module.weight, module.bias]
            tensors.append(module.num_batches_tracked)
            sources.append((name, module.eps, tensors))
    return sources


class KeptBiases:
    """`effective_biases(model)`, made again only when a tensor it is made of has changed.

    A method instance keeps one across its calls, as its model's weights may change between them
    (the sanity check re-randomises them in place, `load_state_dict` restores them): the biases
    are keyed on each such tensor's memory address and version counter, which every in-place
    change bumps, and the tensors are held, so that no other tensor can take their address.
    Writes through `tensor.data` bump no version counter and are not seen: make a new method
    after them.
    """

    def __init__(self) -> None:
        self.key: list | None = None
        self.held: list[torch.Tensor] = []
        self.biases: dict[str, torch.Tensor] = {}

    def __call__(self, model: nn.Module) -> dict[str, torch.Tensor]:
        sources = _bias_sources(model)
        tensors = [t for _, _, group in sources for t in group if t is not None]
        key = [
            (name, eps, [None if t is None else (t.data_ptr(), t._version) for t in group])
            for name, eps, group in sources
        ]
        if key != self.key:
            self.biases = effective_biases(model)
            self.key, self.held = key, [t.detach() for t in tensors]
        return self.biases


def input_terms(
    x: torch.Tensor, grad: torch.Tensor, shift_ratio: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The terms at the input, each (B, C, H, W): "input" x * dy_c/dx, and "input_shift".

    "input_shift" only with `shift_ratio` (C,), t / s of a model that maps its input as
    x' = s * x + t inside `forward` (`InputShiftTerm`): t is the bias of no layer, and its term is
    t * dy_c/dx' = (t / s) * dy_c/dx. Together they are the input term of the network after the
    transform, <x', dy_c/dx'>.
    """
    terms = {"input": x * grad}
    if shift_ratio is not None:
        terms["input_shift"] = shift_ratio.to(grad)[:, None, None] * grad
    return terms


class InputShiftTerm:
    """Whether a method adds the "input_shift" term for `model`, worked out once.

    `ratio` (C,) is t / s of the model's input transform (`input_shift`) when the term is used,
    else None; `params` is the setting to record: {"shift_term": value} where the model shifts its
    input (so stores of the terms with and without it never resume into each other), else {}
    (the setting changes nothing there). ConfigError unless `shift_term` is a bool.
    """

    def __init__(self, method: str, model: nn.Module, shift_term: bool):
        if not isinstance(shift_term, bool):
            raise ConfigError(f"{method}: shift_term must be true or false, got {shift_term!r}")
        transform = input_shift(model)
        self.params = {} if transform is None else {"shift_term": shift_term}
        self.ratio = transform[1] / transform[0] if transform is not None and shift_term else None


def channel_bias(bias: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """bias (C,) viewed to broadcast over an output `like` (B, C, ...): (C, 1, ..., 1)."""
    return bias.view(-1, *(1,) * (like.ndim - 2))


@METHODS.register(
    "tgrad", help="T-Grad: input and bias terms of the score, weighted by their share"
)
class TGrad(SaliencyMethod):
    """T-Grad saliency (B, H, W) at the input resolution, one forward + one backward per batch.

    The score y_c is the explained logit, as published. Terms: T_0 = x * dy_c/dx, and T_l = b_l * dy_c/dz_l for each Conv2d with a bias (z_l its output)
    and each eval-mode batch-norm whose output z_l is a (B, C, h, w) map (b_l its effective bias).
    A model that maps its input as x' = s * x + t inside `forward` (torchvision's pretrained
    GoogLeNet and Inception v3, `input_shift`) gets one more term, "input_shift", t * dy_c/dx':
    the shift is a bias too, of no layer, at the input resolution (an addition to the published
    steps, whose VGG has no such transform); `shift_term=False` leaves it out, as published.
    Linear biases are left out, as published, and so are batch-norms on (B, C) features
    (BatchNorm1d in a head): their terms have no spatial extent to map. Each term becomes a map M_l = sum_c max(T_l, 0) and a weight
    w_l = sum(T_l) / y_c; maps are resized to (H, W) bilinearly, divided by their total (+ EPS) and
    summed with weights max(w_l, 0). The explanation's extras["terms"] (`TGradTerms`) hold the
    names, maps and weights, and their `completeness` the per-image sum of the weights.

    Departure from the published steps: the gate 1[z_l > 0] is not applied. Where a ReLU follows
    z_l directly (every conv of VGG) dy_c/dz_l is already 0 wherever z_l <= 0, so the result is the
    published one exactly; elsewhere (a BatchNorm before a residual addition, ReLU6, SiLU) the gate
    would drop parts of the decomposition, while without it the terms still add up to the score on
    networks built from linear pieces. What is left out (Linear biases, non-linear activations such
    as SiLU, ReLU6's clipping, constants added inside `forward` other than the input transform)
    shows as completeness away from 1; `xaibench.methods.support` says per model whether the split
    is exact.

    The weights divide by y_c as published, so a score close to 0 gives large weights.
    """

    name = "tgrad"
    requires = ("bias_terms",)

    def __init__(self, model: nn.Module, shift_term: bool = True):
        self.shift = InputShiftTerm(self.name, model, shift_term)
        super().__init__(model, **self.shift.params)
        self.biases = KeptBiases()

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        biases = self.biases(self.model)

        def reduce(call: LayerCall, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
            if grad.ndim != 4:
                return None
            term = grad * biases[call.name][:, None, None]
            total = term.sum(dim=(1, 2, 3))
            return term.clamp_(min=0).sum(dim=1), total

        hooks = record_layers(self.model, list(biases), reduce_gradient=reduce)
        with autograd_enabled(), hooks as rec:
            x = gradient_input(images)
            logits = self.model(x)
            targets = top1_targets(logits, targets)
            score = explained_score(logits, targets, self.explains)
            (grad,) = backward(score.sum(), [x])
        score = full_precision(score.detach())
        inputs = input_terms(x.detach(), grad, self.shift.ratio)
        maps = [term.clamp(min=0).sum(dim=1) for term in inputs.values()]
        totals = [term.sum(dim=(1, 2, 3)) for term in inputs.values()]
        spatial = [call for call in rec.calls if call.shape is not None and len(call.shape) == 4]
        for call in spatial:
            layer_map, total = _zero_term(call, score) if call.reduced is None else call.reduced
            maps.append(layer_map)
            totals.append(total)
        weights = torch.stack(totals, dim=1) / score[:, None]
        terms = TGradTerms([*inputs, *(c.name for c in spatial)], maps, weights)
        saliency = combine_terms(maps, weights, tuple(images.shape[2:]))
        return Explanation(saliency.float(), targets, logits.detach(), {"terms": terms})


def combine_terms(
    maps: list[torch.Tensor], weights: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """Steps 5-6: sum over l of max(w_l, 0) * resized M_l / (total of resized M_l + EPS).

    maps: per term (B, h_l, w_l); weights: (B, K), one per term; size: (H, W). Returns (B, H, W).
    Bilinear resizing is linear, so the terms of one resolution are summed first and resized once;
    the total of a resized map is computed without resizing it (`resized_totals`).
    """
    scale = weights.clamp(min=0) / (resized_totals(maps, size) + EPS)
    by_size: dict[tuple[int, int], torch.Tensor] = {}
    for layer_map, factor in zip(maps, scale.unbind(dim=1), strict=True):
        key = tuple(layer_map.shape[1:])
        by_size[key] = by_size.get(key, 0) + factor[:, None, None] * layer_map
    saliency = by_size.pop(tuple(size), weights.new_zeros(weights.shape[0], *size))
    for summed in by_size.values():
        resized = F.interpolate(summed[:, None], size=size, mode="bilinear", align_corners=False)
        saliency = saliency + resized[:, 0]
    return saliency


def resized_totals(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """(B, K): the total of each map (B, h_l, w_l) once bilinearly resized to size (H, W).

    Bilinear resizing is separable, resized = A_h M A_w^T, so its total is r_h^T M r_w with r the
    column sums of the 1-D interpolation matrices.
    """
    sums: dict[tuple[int, int], torch.Tensor] = {}
    totals = []
    for layer_map in maps:
        h, w = layer_map.shape[1:]
        for n, out in ((h, size[0]), (w, size[1])):
            if (n, out) not in sums:
                sums[n, out] = _column_sums(n, out, layer_map)
        totals.append(torch.einsum("bhw,h,w->b", layer_map, sums[h, size[0]], sums[w, size[1]]))
    return torch.stack(totals, dim=1)


def _column_sums(n: int, out: int, like: torch.Tensor) -> torch.Tensor:
    """(n,): column sums of the (out x n) matrix of 1-D linear resizing, align_corners=False."""
    basis = torch.eye(n, dtype=like.dtype, device=like.device)[None]
    return F.interpolate(basis, size=out, mode="linear", align_corners=False)[0].sum(dim=1)


def _zero_term(call: LayerCall, score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The term of a layer the backward never reached (its output does not affect the score)."""
    return score.new_zeros(call.shape[0], *call.shape[2:]), score.new_zeros(call.shape[0])
