"""`xaibench.explain` and `xaibench.score`: explain a batch and score it in memory, with no store,
no image folder and no files.

    import xaibench
    explanation = xaibench.explain(model, images, "gradcam")
    table = xaibench.score(model, images, explanation.maps, explanation.targets)

`images` are what the model takes: (B, 3, H, W), already normalised. `score` takes maps from any
source, xaibench's, Captum's or pytorch-grad-cam's, as (B, h, w) or (B, 1, h, w) tensors or arrays,
and computes the metrics exactly as `xaibench evaluate` does for the same maps (the same metric
objects, protocol and chunking), one row per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.core.runtime import default_batch_size, default_chunk_size
from xaibench.methods import METHODS
from xaibench.methods.base import Explanation
from xaibench.metrics.base import (
    MetricResult,
    score_function,
)
from xaibench.metrics.protocols import Protocol, get_protocol
from xaibench.pipelines.evaluate import BatchScorer, evaluation_metric_objects, metric_chunks

DEFAULT_METRICS = ("insertion", "deletion")


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str,
    targets: torch.Tensor | Sequence[int] | None = None,
    **params: Any,
) -> Explanation:
    """Explain images (B, 3, H, W) with the method registered as `method` (`xaibench list
    methods`), set up with `params` (its settings, e.g. `layer="features.28"`), for `targets`
    (B,) classes (None: each image's top-1 class). Returns the `Explanation`: maps (B, h, w),
    targets (B,) and logits. The model runs in eval mode for the call and is restored after."""
    method_class = METHODS.get(method, param="method")
    known = method_class.setting_names()
    unknown = [key for key in params if key not in known]
    if unknown:
        raise ConfigError(
            f"{method} has no setting {unknown[0]!r} (its settings: {', '.join(known) or 'none'})"
        )
    chosen = None if targets is None else _as_tensor(targets, "targets", images.device).long()
    return method_class(model, **params)(images, chosen)


def score(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray | Sequence[int],
    metrics: Sequence[str] = DEFAULT_METRICS,
    protocol: str | Protocol = "polycam",
    *,
    metric_params: Mapping[str, Mapping[str, Any]] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> pd.DataFrame:
    """Score `maps` of `images` (B, 3, H, W) for `targets` (B,) with `metrics` under `protocol`
    (a name, or a `Protocol` such as `get_protocol("polycam", step=448)`).

    maps: (B, h, w) or (B, 1, h, w), tensor or array, any resolution (resized to H x W as
    `evaluate` resizes them); metric_params: metric -> settings, as `evaluate`'s; std: the (3,)
    std of the images' normalisation, for the metrics that work in pixel units (ROAD's noise;
    None: the normalised space is taken as pixel space); batch_size images at a time (None: the
    device's default); chunk_size perturbed images per forward (None: the device's default).

    Returns one row per image: `image` (its position in the batch), `target`, `clean_score` (the
    protocol's score of the class on the clean image) and every metric's column, plus the flags
    and diagnostics the metrics report, as in `evaluate`'s per-image table. The model runs in eval
    mode under `torch.inference_mode`.
    """
    device = images.device
    if images.ndim != 4 or images.shape[1] != 3:
        raise ConfigError(f"images: give (B, 3, H, W), got {tuple(images.shape)}")
    count = images.shape[0]
    maps_tensor = _maps(maps, count, device)
    target_tensor = _as_tensor(targets, "targets", device).long()
    if target_tensor.shape != (count,):
        raise ConfigError(
            f"targets: give one per image ({count},), got {tuple(target_tensor.shape)}"
        )
    chosen = get_protocol(protocol) if isinstance(protocol, str) else protocol
    objects = evaluation_metric_objects(list(metrics), metric_params)
    needing = [m.name for m in objects if m.needs_boxes]
    if needing:
        raise ConfigError(
            f"{', '.join(needing)} need bounding boxes, which score() does not take; "
            "use `xaibench evaluate --boxes`",
            param="metrics",
        )
    training = model.training
    model.eval()
    try:
        scorer = BatchScorer(
            model,
            score_function(model, chosen.score),
            objects,
            None,
            None,
            chosen,
            metric_chunks(objects, chunk_size or default_chunk_size(device)),
        )
        chosen_targets = target_tensor.cpu().numpy()
        rows = np.arange(count)
        step = batch_size or default_batch_size(device)
        parts = []
        for start in range(0, count, step):
            part = slice(start, start + step)
            clean, results = scorer(
                images[part], maps_tensor[part], chosen_targets[part], None, rows[part], std
            )
            parts.append(_table(rows[part], chosen_targets[part], clean, results))
    finally:
        model.train(training)
    return pd.concat(parts, ignore_index=True)


def _table(
    rows: np.ndarray, targets: np.ndarray, clean: torch.Tensor, results: list[MetricResult]
) -> pd.DataFrame:
    """One batch's rows, columns as `evaluate`'s per-image table names them."""
    columns: dict[str, Any] = {
        "image": rows,
        "target": targets,
        "clean_score": clean.float().cpu().numpy(),
    }
    for result in results:
        for name, tensor in {**result.values, **result.diagnostics, **result.flags}.items():
            flag = tensor.dtype == torch.bool
            columns[name] = tensor.cpu().numpy() if flag else tensor.double().cpu().numpy()
    return pd.DataFrame(columns)


def _maps(maps: torch.Tensor | np.ndarray, count: int, device: torch.device) -> torch.Tensor:
    tensor = _as_tensor(maps, "maps", device)
    if tensor.ndim == 4 and tensor.shape[1] == 1:
        tensor = tensor[:, 0]
    if tensor.ndim != 3 or tensor.shape[0] != count:
        raise ConfigError(
            f"maps: give one per image, (B, h, w) or (B, 1, h, w) with B = {count}, got "
            f"{tuple(tensor.shape)}; reduce channel maps first, e.g. maps.abs().sum(1)"
        )
    return tensor.detach().float()


def _as_tensor(value: Any, name: str, device: torch.device) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(value) if not torch.is_tensor(value) else value)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{name}: give a tensor or an array ({error})") from None
    return tensor.to(device)
