"""One image explained by several methods: what `xaibench explain` draws.

The image goes through the protocol's preprocessing, the model gives the top classes, and each
method explains the batch of that one image for the target class (`explained_class`: the top-1
prediction, the label its class folder names, or a class given by index, WNID or name); CAM methods on the same layer
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
from xaibench.data.classes import WNID_PATTERN, imagenet_classes
from xaibench.data.dataset import read_image
from xaibench.methods import METHODS
from xaibench.methods.base import Explanation
from xaibench.metrics.base import saliency_at_input_size
from xaibench.metrics.protocols import get_protocol
from xaibench.models.factory import LoadedModel
from xaibench.pipelines.generate import explain_group, shared_pass_groups
from xaibench.results.explanation import ImageExplanation

TOP_CLASSES = 5


@tf32_settings()  # as generate computes at its default precision
def explain_image(
    path: Path,
    loaded: LoadedModel,
    methods: Sequence[str],
    *,
    device: torch.device,
    protocol: str = "polycam",
    method_params: Mapping[str, dict] | None = None,
    tgrad_layers: bool = False,
    target: str = "predicted",
) -> ImageExplanation:
    """Explain one class of the image at `path` with every method in `methods`: `target`
    "predicted" (the model's top-1), "label" (the ImageNet class its folder's WNID names) or a
    class index, WNID or name (`explained_class`)."""
    if not methods:
        raise ConfigError("give at least one method", param="methods")
    requested = explained_class(target, Path(path))  # a bad target fails before any work
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
    _check_within_outputs(requested, target, len(probabilities))
    explained = int(best.indices[0]) if requested is None else requested
    target_index = torch.tensor([explained], device=device)
    params = method_params or {}
    built = [METHODS.get(name)(model, **params.get(name, {})) for name in methods]
    explanations: list[Explanation | None] = [None] * len(built)
    for group in shared_pass_groups(built):
        shared = explain_group([built[i] for i in group], batch, target_index)
        for position, explanation in zip(group, shared, strict=True):
            explanations[position] = explanation
    size = tuple(batch.shape[-2:])
    maps = {
        name: saliency_at_input_size(explanation.maps.detach(), size)[0].cpu().numpy()
        for name, explanation in zip(methods, explanations, strict=True)
    }
    terms = explanations[list(methods).index("tgrad")].extras["terms"] if tgrad_layers else None
    image = preprocess.unnormalise(batch[0]).cpu().numpy()
    target_class = (explained, classes.short_name(explained), float(probabilities[explained]))
    return ImageExplanation(image, top_classes, target_class, maps, terms)


def explained_class(target: str, path: Path) -> int | None:
    """The class index `target` names for the image at `path` (`explain_image`), or None for
    "predicted"; ConfigError for a target that names no ImageNet class."""
    if target == "predicted":
        return None
    if target != "label":
        return imagenet_classes().resolve(target)
    folder = path.resolve().parent.name
    if not WNID_PATTERN.fullmatch(folder):
        raise ConfigError(
            f"{path}: 'label' reads the class from the image's folder, and {folder!r} is not "
            "a WNID (e.g. n01440764); give the class as an index, WNID or name",
            param="target",
        )
    return imagenet_classes().index_of(folder)


def _check_within_outputs(index: int | None, target: str, num_classes: int) -> None:
    if index is not None and index >= num_classes:
        raise ConfigError(
            f"class {index} ({target!r}) is beyond the model's {num_classes} outputs",
            param="target",
        )
