"""CAM methods that weight a layer's channels by running the model again: Score-CAM, Ablation-CAM.

Both explain a batch (B, 3, H, W) with one clean forward that keeps the layer's activations
A (B, C, h, w), then score every (image, channel) pair with one more forward each. The pairs of the
whole batch are run in chunks of `channel_batch` through `apply_in_chunks`, so memory is bounded by
the chunk size and the maps do not depend on it. Pairs whose answer is known without a forward are
skipped (a constant activation map for Score-CAM, an all-zero one for Ablation-CAM).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xaibench.core.batching import ChunkSize, ChunkSizes, apply_in_chunks
from xaibench.core.checks import positive_int
from xaibench.core.errors import ConfigError
from xaibench.core.runtime import default_chunk_size
from xaibench.methods.base import METHODS, Explanation, Passes
from xaibench.methods.cam import LayerMethod, layer_forward, weighted_cam
from xaibench.methods.targets import explained_score


class ChannelPerturbationCAM(LayerMethod):
    """Shared settings: `layer` (None = `find_target_layer`) and `channel_batch`.

    channel_batch: (image, channel) pairs per forward; None = `default_chunk_size` of the images'
    device. The maps do not depend on it.
    """

    def __init__(
        self, model: nn.Module, layer: str | None = None, channel_batch: int | None = None
    ):
        if channel_batch is not None:
            positive_int(channel_batch, f"{self.name}: channel_batch")
        super().__init__(model, layer, channel_batch=channel_batch)
        self.channel_batch = channel_batch
        self.chunk_sizes = ChunkSizes("channel_batch")

    @classmethod
    def passes(
        cls,
        params: Mapping[str, Any],
        channels: int | Sequence[int] | None = None,
        input_size: tuple[int, int] | None = None,
    ) -> Passes:
        """1 + C forwards per image, no backward: the clean forward and one per channel of the
        layer's output (B, C, h, w); channels: that C, required.

        An upper bound: the channels whose weight is known without a forward (a constant map for
        Score-CAM, an all-zero one for Ablation-CAM) are skipped, and how many depends on the image.
        """
        cls.full_settings(params)
        if channels is None:
            raise ConfigError(
                f"{cls.name}: its passes depend on the layer's channels; give channels, the C "
                "of the layer's (B, C, h, w) output"
            )
        return Passes(1 + positive_int(channels, f"{cls.name}: channels"), 0)

    def chunk_size(self, images: torch.Tensor) -> ChunkSize:
        """Pairs per forward: `channel_batch`, or the default of the images' device; kept across
        calls, so a size lowered on out-of-memory stays lower."""
        return self.chunk_sizes.get(self.channel_batch or default_chunk_size(images.device))


@METHODS.register(
    "scorecam", help="Score-CAM: activation maps weighted by the class probability of their mask"
)
class ScoreCAM(ChannelPerturbationCAM):
    """Score-CAM (Wang et al., 2020): ReLU(sum_k s_k A_k) at the layer's resolution (B, h, w).

    Each activation map A_k is resized to the image bilinearly, min-max normalised to [0, 1] and
    multiplied into the image; s_k is the softmax probability of the explained class for that
    masked image (`score`), as in the paper and the authors' code. A constant map carries no
    location and gets s_k = 0 without a forward, as in the authors' code.

    Departures: the paper's increase of confidence subtracts the baseline image's probability from
    every s_k; the authors' code leaves it out, and so does this one. The map is returned at the
    layer's resolution: bilinear resizing is linear, so resizing this map before its ReLU gives the
    authors' map, which sums the resized A_k. pytorch-grad-cam instead weights the channels by a
    softmax over the channels of the masked images' logits; the two maps differ (tests show it).
    """

    name = "scorecam"
    explains = "probability"

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        result = layer_forward(self.model, self.layer, images, targets, self.layout)
        weights = self.channel_scores(images, result.activations, result.targets)
        return Explanation(weighted_cam(weights, result.activations), result.targets, result.logits)

    def channel_scores(
        self, images: torch.Tensor, activations: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """(B, 3, H, W), (B, C, h, w), (B,) -> (B, C): `score` of each image masked by each map."""
        size = tuple(images.shape[2:])
        flat = activations.flatten(2)
        varies = flat.amax(dim=2) > flat.amin(dim=2)
        pair_image, pair_channel = varies.nonzero(as_tuple=True)

        def score_pairs(image: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
            masks = self.masks(activations[image, channel], size)
            return self.score(self.model(images[image] * masks), targets[image])

        with torch.no_grad():
            scores = apply_in_chunks(
                score_pairs, pair_image, pair_channel, chunk_size=self.chunk_size(images)
            )
        weights = scores.new_zeros(varies.shape)
        weights[pair_image, pair_channel] = scores
        return weights

    def masks(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(L, h, w) non-constant maps -> (L, 1, H, W): resized bilinearly, min-max normalised."""
        masks = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)
        low = masks.amin(dim=(2, 3), keepdim=True)
        high = masks.amax(dim=(2, 3), keepdim=True)
        return (masks - low) / (high - low)

    def score(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(L, K), (L,) -> (L,): the explained score, the softmax probability of each target."""
        return explained_score(logits, targets, self.explains)


@METHODS.register(
    "ablationcam", help="Ablation-CAM: channels weighted by the score drop when each is zeroed"
)
class AblationCAM(ChannelPerturbationCAM):
    """Ablation-CAM (Desai and Ramaswamy, 2020): ReLU(sum_k w_k A_k), map (B, h, w).

    w_k = (y_c - y_c^k) / y_c, with y_c the explained logit and y_c^k the logit when channel k of
    the layer's output is set to 0: the model runs on the image, and the layer's output is
    replaced by the clean forward's activations with channel k zeroed (so y_c^k differs from y_c
    only by the ablation, not by rounding in the layers below; a vision transformer's class and
    distillation tokens are kept as they were, `Layout.to_output`). The layer's own forward is
    skipped at that run (`precomputed_output`) once the first chunk has shown it pure: leaving its inputs
    unchanged and returning no tensor that shares their memory. An all-zero channel is not run:
    ablating it changes nothing, w_k = 0. `passes` counts each ablated forward as a whole one,
    skipped layer and all.

    As published, the weights divide by y_c: a negative y_c flips every weight's sign, and a y_c
    near 0 makes them large. pytorch-grad-cam ablates with a large negative value instead of 0
    when the layer's activations are not all >= 0; this follows the paper on every layer.
    """

    compilable = False

    name = "ablationcam"

    def explain(self, images: torch.Tensor, targets: torch.Tensor | None) -> Explanation:
        result = layer_forward(self.model, self.layer, images, targets, self.layout)
        activations, targets = result.activations, result.targets
        channels = activations.shape[1]
        active = activations.flatten(2).ne(0).any(dim=2)
        pair_image, pair_channel = active.nonzero(as_tuple=True)

        # None until the first chunk has run the layer's forward and shown whether it is pure
        skip: bool | None = None

        def ablated_scores(image: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
            nonlocal skip
            keep = 1 - F.one_hot(channel, channels).to(activations.dtype)[:, :, None, None]
            ablated = self.layout.to_output(activations[image] * keep, result.output[image])
            with (
                torch.no_grad(),
                precomputed_output(
                    self.model, self.layer, ablated, run=result.runs, skip=bool(skip)
                ) as pure,
            ):
                logits = self.model(images[image])
            if skip is None:
                skip = all(pure)
            return explained_score(logits, targets[image], self.explains)

        ablated = apply_in_chunks(
            ablated_scores, pair_image, pair_channel, chunk_size=self.chunk_size(images)
        )
        score = explained_score(result.logits, targets, self.explains)
        drops = score.new_zeros(active.shape)
        drops[pair_image, pair_channel] = score[pair_image] - ablated
        weights = drops / score[:, None]
        return Explanation(weighted_cam(weights, activations), targets, result.logits)


@contextmanager
def precomputed_output(
    model: nn.Module, layer: str, output: torch.Tensor, run: int, skip: bool
) -> Iterator[list[bool]]:
    """Within the block, the `run`-th call (1-based) of submodule `layer` returns `output`.

    skip=True: that call does not run the module's forward (its hooks still run, and see
    `output`). skip=False: the forward runs and its result is dropped, and the yielded list gets
    whether that run was pure: it left its tensor arguments unchanged (version counters) and
    returned no tensor sharing memory with them. Only then is skipping it safe, since the rest of
    the model cannot tell. The other calls of the module run as usual. The module's `forward` is
    swapped for the block and restored exactly when it ends, also on an exception.
    """
    module = model.get_submodule(layer)
    own = module.__dict__.get("forward", _MISSING)
    original = module.forward
    calls = 0
    pure: list[bool] = []

    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls != run:
            return original(*args, **kwargs)
        if skip:
            return output
        inputs = [*args, *kwargs.values()]
        tensors = [t for t in inputs if isinstance(t, torch.Tensor)]
        # arguments holding tensors inside containers are not inspected: never skipped
        simple = len(tensors) == sum(not isinstance(a, list | tuple | dict) for a in inputs)
        before = _versions(tensors)
        result = original(*args, **kwargs)
        after = _versions(tensors)
        returned = [result] if isinstance(result, torch.Tensor) else []
        shared = {_storage(t) for t in tensors} & {_storage(t) for t in returned}
        pure.append(
            simple and before is not None and before == after and bool(returned) and not shared
        )
        return output

    module.forward = forward
    try:
        yield pure
    finally:
        if own is _MISSING:
            del module.forward
        else:
            module.forward = own


_MISSING = object()


def _versions(tensors: list[torch.Tensor]) -> list[int] | None:
    """Version counters (bumped by in-place changes); None where one has none (inference mode)."""
    try:
        return [t._version for t in tensors]
    except RuntimeError:
        return None


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()
