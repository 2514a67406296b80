"""Poly-CAM (Englebienne et al., 2022): a CAM refined backwards through the network's stages.

"Backward recursive Class Activation Map refinement for high resolution saliency map". Each chosen
layer l (the output of each resolution stage, earliest first) gives a CAM
    C_l = ReLU(sum_k w_k^l A_k^l)
whose channel weights w_k^l come from forwards of the image masked by each normalised activation
map (PCAM+, PCAM-, PCAM+/- differ only in these weights). Starting from the deepest layer,
M_L = C_L, each earlier layer refines the map:
    M_l = LNorm(C_l) * Up(M_{l+1}),   LNorm(C)(p) = C(p) / Up(Down(C))(p),
where Down averages C over the block of positions under each position of M_{l+1} and Up resizes
bilinearly. LNorm keeps only how C_l distributes relevance inside each coarse block, so the
coarse map sets how much relevance a block gets and the finer layer where it lies inside it. The
result M_1 has the resolution of the earliest layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xaibench.core.batching import ChunkSizes, apply_in_chunks
from xaibench.core.checks import positive_int
from xaibench.core.errors import ConfigError
from xaibench.core.runtime import default_chunk_size
from xaibench.methods.base import METHODS, Explanation, Passes, SaliencyMethod, top1_targets
from xaibench.methods.hooks import record_layers
from xaibench.methods.layers import feature_maps, trace_layers, validate_layer
from xaibench.methods.targets import explained_score
from xaibench.models.factory import model_input_size

LNORM_FLOOR = 1e-12
"""Lower bound of LNorm's local averages (a block whose CAM is all 0 stays 0)."""


def find_stage_layers(model: nn.Module, input_size: tuple[int, int] | None = None) -> list[str]:
    """The output of each resolution stage, earliest first: Poly-CAM's default layers.

    Traces one eval-mode forward of a zero image (1, 3, *input_size) (`trace_layers`; None: the
    model's own size, `model_input_size`) and keeps the feature maps (`feature_maps`: (B, C, h, w)
    with h, w > 1, no vision-transformer patch embedding). A module counts at its last run, with
    its output's spatial size.
    For each spatial size, the chosen module is the last to finish among the shallowest modules
    (fewest dots in the name) with outputs of that size: the stage container where there is one
    (ResNet's `layer1`, not the first convolution of `layer2`, which still runs at that size), the
    last module before the down-sampling in a flat stack (VGG's `features.3` before the pooling
    `features.4`). Raises ConfigError when no module qualifies.
    """
    input_size = input_size or model_input_size(model)
    calls = trace_layers(model, input_size)
    hint = "pass Poly-CAM's layers explicitly (layers=...)"
    maps = feature_maps(calls, type(model).__name__, input_size, hint)
    last_runs = {call.name: (order, call.shape) for order, call in enumerate(maps)}
    best: dict[tuple[int, int], tuple[int, int, str]] = {}
    for name, (order, shape) in last_runs.items():
        key = (-name.count("."), order)
        size = tuple(shape[2:])
        if size not in best or key > best[size][:2]:
            best[size] = (*key, name)
    return [name for _, _, name in sorted(best.values(), key=lambda entry: entry[1])]


@METHODS.register(
    "polycam", help="Poly-CAM PCAM+: multi-layer CAM refined backwards, masked scores"
)
class PolyCAM(SaliencyMethod):
    """PCAM+ (B, h_1, w_1) at the resolution of the earliest layer; the base of PCAM- and PCAM+/-.

    layers: module names in forward order (the last is the deepest); None = `find_stage_layers`.
    channel_batch: (image, channel) pairs per forward; None = `default_chunk_size` of the images'
    device, lowered on out-of-memory and kept lower for later calls; the maps do not depend on
    it. Each layer costs one forward per channel and image (two for PCAM+/-), after one clean
    forward that records every layer's activations.

    Channel weights: each activation map A_k (B, h, w) is min-max normalised to [0, 1] per image
    and channel (a constant map becomes 0), resized bilinearly to the image and multiplied into it
    (mask m_k); p(.) is the softmax probability of the explained class, as in the paper (the
    explained score, `explains`). PCAM+: w_k = p(x * m_k).

    Departures from the authors' code: masks are min-max normalised, as the paper states; the
    code instead clips at the 0.1 and 99.9 percentiles and divides by the upper one (not by their
    difference). Down is an average over each block (adaptive average pooling), as the paper
    describes LNorm; the code downsizes bilinearly, which is the same average when a stage halves
    the resolution exactly (VGG, ResNet at even sizes) and samples fewer pixels otherwise. The map
    is returned as computed, not min-max normalised nor resized to the image.
    """

    name = "polycam"
    explains = "probability"
    requires = ("feature_map",)
    masks_per_channel: ClassVar[int] = 1
    """Masked forwards per image and channel of each layer: the kept region (PCAM+) or the
    removed one (PCAM-); both for PCAM+/-."""

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        channel_batch: int | None = None,
    ):
        layers = find_stage_layers(model) if layers is None else list(layers)
        if not layers:
            raise ConfigError(f"{self.name}: give at least one layer")
        for layer in layers:
            validate_layer(model, layer)
        if channel_batch is not None:
            positive_int(channel_batch, f"{self.name}: channel_batch")
        super().__init__(model, layers=layers, channel_batch=channel_batch)
        self.layers, self.channel_batch = layers, channel_batch
        self.chunk_sizes = ChunkSizes("channel_batch")

    @classmethod
    def passes(
        cls,
        params: Mapping[str, Any],
        channels: int | Sequence[int] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> Passes:
        """1 + masks_per_channel * sum_l C_l forwards per image, no backward: the clean forward,
        then one per masked copy (`masked_scores`), constant maps included.

        channels: C_l of each layer's output (B, C_l, h_l, w_l), in the order of `layers` (with
        layers None, of `find_stage_layers`'), required.
        """
        layers = cls.full_settings(params)["layers"]
        if channels is None or isinstance(channels, int):
            raise ConfigError(
                f"{cls.name}: its passes depend on its layers' channels; give channels, the C of "
                "each layer's (B, C, h, w) output, in the order of its layers"
            )
        counts = [positive_int(c, f"{cls.name}: channels") for c in channels]
        if not counts or (layers is not None and len(counts) != len(layers)):
            expected = "at least one" if layers is None else str(len(layers))
            raise ConfigError(
                f"{cls.name}: give channels for each of its layers ({expected}), got {len(counts)}"
            )
        return Passes(1 + cls.masks_per_channel * sum(counts), 0)

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        with torch.no_grad():
            with record_layers(self.model, self.layers, activations=True) as rec:
                logits = self.model(images)
            targets = top1_targets(logits, targets)
            baseline = explained_score(logits, targets, self.explains)
            saliency = None
            for layer in reversed(self.layers):
                activations = rec.last(layer).activation
                if activations.ndim != 4:
                    raise ConfigError(
                        f"{self.name}: layer {layer!r} outputs shape {tuple(activations.shape)}, "
                        "not (B, C, h, w); pick convolutional layers"
                    )
                weights = self.channel_weights(
                    images, targets, normalise_maps(activations), baseline
                )
                cam = torch.relu(torch.einsum("bc,bchw->bhw", weights, activations))
                saliency = cam if saliency is None else refine(cam, saliency)
        return Explanation(saliency.float(), targets, logits)

    def channel_weights(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        masks: torch.Tensor,
        baseline: torch.Tensor,
    ) -> torch.Tensor:
        """(B, 3, H, W), (B,), masks (B, C, h, w) in [0, 1], p(x) (B,) -> weights (B, C)."""
        return self.masked_scores(images, targets, masks)

    def masked_scores(
        self, images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor
    ) -> torch.Tensor:
        """(B, 3, H, W), (B,), (B, C, h, w) -> (B, C): p(x * resized mask) per image and channel."""
        batch, channels = masks.shape[:2]
        size = images.shape[2:]
        image_index = torch.arange(batch, device=images.device).repeat_interleave(channels)

        def score_pairs(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
            resized = F.interpolate(mask[:, None], size=size, mode="bilinear", align_corners=False)
            logits = self.model(images[image] * resized)
            return explained_score(logits, targets[image], self.explains)

        chunk = self.chunk_sizes.get(self.channel_batch or default_chunk_size(images.device))
        scores = apply_in_chunks(score_pairs, masks.flatten(0, 1), image_index, chunk_size=chunk)
        return scores.view(batch, channels)


@METHODS.register(
    "polycam_minus", help="Poly-CAM PCAM-: multi-layer CAM, weights from the score drop of removal"
)
class PolyCAMMinus(PolyCAM):
    """PCAM-: w_k = ReLU(p(x) - p(x * (1 - m_k))), the drop when the channel's region is removed."""

    name = "polycam_minus"

    def channel_weights(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        masks: torch.Tensor,
        baseline: torch.Tensor,
    ) -> torch.Tensor:
        return torch.relu(baseline[:, None] - self.masked_scores(images, targets, 1 - masks))


@METHODS.register(
    "polycam_pm", help="Poly-CAM PCAM+/-: multi-layer CAM, weights from keeping and removing"
)
class PolyCAMPlusMinus(PolyCAM):
    """PCAM+/-: w_k = ReLU(p(x * m_k) + p(x) - p(x * (1 - m_k))), two forwards per channel."""

    name = "polycam_pm"
    masks_per_channel = 2

    def channel_weights(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        masks: torch.Tensor,
        baseline: torch.Tensor,
    ) -> torch.Tensor:
        kept = self.masked_scores(images, targets, masks)
        removed = self.masked_scores(images, targets, 1 - masks)
        return torch.relu(kept + baseline[:, None] - removed)


def normalise_maps(activations: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, h, w): each map min-max scaled to [0, 1]; constant maps become 0."""
    flat = activations.flatten(2)
    low = flat.amin(dim=2)[..., None, None]
    span = flat.amax(dim=2)[..., None, None] - low
    return torch.where(span > 0, (activations - low) / span, 0)


def refine(cam: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """C_l (B, h, w) and M_{l+1} (B, h', w') -> M_l = LNorm(C_l) * Up(M_{l+1}), (B, h, w)."""
    size = cam.shape[1:]
    local = F.adaptive_avg_pool2d(cam[:, None], coarse.shape[1:])
    local = F.interpolate(local, size=size, mode="bilinear", align_corners=False)[:, 0]
    upsampled = F.interpolate(coarse[:, None], size=size, mode="bilinear", align_corners=False)
    return cam / local.clamp(min=LNORM_FLOOR) * upsampled[:, 0]
