"""One image explained by several methods: what `xaibench explain` draws.

The image goes through the protocol's preprocessing, the model gives the top classes, and each
method explains the batch of that one image for the top-1 class; CAM methods on the same layer
share one forward and backward, as in `generate` (`shared_pass_groups`). With `tgrad_layers`,
T-Grad's per-term maps and weights (its explanation's extras["terms"]) are kept too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from xaibench.core.errors import ConfigError
from xaibench.core.precision import tf32_settings
from xaibench.core.runtime import prepare_model
from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import read_image
from xaibench.methods import METHODS
from xaibench.methods.base import Explanation
from xaibench.metrics.base import saliency_at_input_size
from xaibench.metrics.protocols import get_protocol
from xaibench.models.factory import LoadedModel
from xaibench.pipelines.generate import explain_group, shared_pass_groups
from xaibench.results.explanation import ImageExplanation

TOP_CLASSES = 5


@tf32_settings()  # IEEE float32, as generate computes
def explain_image(
    path: Path,
    loaded: LoadedModel,
    methods: Sequence[str],
    *,
    device: torch.device,
    protocol: str = "polycam",
    method_params: Mapping[str, dict] | None = None,
    tgrad_layers: bool = False,
) -> ImageExplanation:
    """Explain the model's top-1 class on the image at `path` with every method in `methods`."""
    if not methods:
        raise ConfigError("give at least one method", param="methods")
    if tgrad_layers and "tgrad" not in methods:
        raise ConfigError("shows T-Grad's terms: add tgrad to `methods`", param="tgrad_layers")
    preprocess = get_protocol(protocol).preprocess(loaded.mean, loaded.std, loaded.input_size)
    batch = preprocess(read_image(Path(path), "give a JPEG or PNG file"))[None].to(device)
    model = prepare_model(loaded.model, device).eval()
    with torch.inference_mode():
        probabilities = model(batch).float().softmax(dim=1)[0]
    best = probabilities.topk(min(TOP_CLASSES, probabilities.numel()))
    classes = imagenet_classes()
    top_classes = [
        (int(i), classes.short_name(int(i)), float(p))
        for p, i in zip(best.values.cpu(), best.indices.cpu(), strict=True)
    ]
    target = best.indices[:1]
    params = method_params or {}
    built = [METHODS.get(name)(model, **params.get(name, {})) for name in methods]
    explanations: list[Explanation | None] = [None] * len(built)
    for group in shared_pass_groups(built):
        shared = explain_group([built[i] for i in group], batch, target)
        for position, explanation in zip(group, shared, strict=True):
            explanations[position] = explanation
    size = tuple(batch.shape[-2:])
    maps = {
        name: saliency_at_input_size(explanation.maps.detach(), size)[0].cpu().numpy()
        for name, explanation in zip(methods, explanations, strict=True)
    }
    terms = explanations[list(methods).index("tgrad")].extras["terms"] if tgrad_layers else None
    image = preprocess.unnormalise(batch[0]).cpu().numpy()
    return ImageExplanation(image, top_classes, maps, terms)
