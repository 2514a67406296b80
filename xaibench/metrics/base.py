"""The metric contract: a batch context in, per-image values (and curves and flags) out.

A runner resizes the stored maps with `saliency_at_input_size`, scores the clean images once, builds
a `MetricContext` and calls `score_batch` of every requested metric on it. Metrics that share work
(insertion and deletion share the pixel order; ins_del reuses both curves; avg_drop and increase
share the explanation-image forward) share it through `MetricContext.shared`, so asking for all of
them costs no more than asking for the underlying ones.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xaibench.core.batching import ChunkSize
from xaibench.core.checks import json_or_text
from xaibench.core.errors import ConfigError
from xaibench.core.precision import full_precision
from xaibench.core.registry import Registry
from xaibench.core.runtime import default_chunk_size
from xaibench.methods.targets import explained_score
from xaibench.metrics.protocols import SCORES, Protocol

T = TypeVar("T")
ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(N, 3, H, W) normalised images, (N,) classes -> (N,) score of each image's class."""


def saliency_at_input_size(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) maps of any dtype -> (B, H, W) float32, bilinear with align_corners=False.

    Only the resize (and the cast to float32, which keeps the pixel order) is applied.
    """
    maps = maps.float()
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    resized = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)
    return resized[:, 0]


def score_function(model: nn.Module, score: str = "probability") -> ScoreFn:
    """A `ScoreFn` from a model that returns logits (B, K): softmax p_c or the logit y_c.

    The model must not end with a softmax of its own, or the probability would be taken twice. It
    runs as it is (the caller puts it in eval mode) under `torch.inference_mode`; scores are
    float32 whatever the forward's precision.
    """
    if score not in SCORES:
        raise ConfigError(f"score must be one of {SCORES}, got {score!r}")
    kind = "probability" if score == "probability" else "logit"

    @torch.inference_mode()
    def score_fn(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = full_precision(model(images))
        return explained_score(logits, targets, kind)

    return score_fn


@dataclass
class MetricContext:
    """One batch to evaluate, on one device.

    images: (B, 3, H, W) normalised; saliency: (B, H, W) at input size (`saliency_at_input_size`);
    targets: (B,) classes explained; clean_scores: (B,) their scores on the clean images, computed
    once by the runner in the protocol's score space; score_fn: scores perturbed images;
    chunk_size: perturbed images per `score_fn` call (None: `default_chunk_size` of the device); a
    `ChunkSize` shared over batches is halved on CUDA out-of-memory and keeps its lower value;
    boxes: (B, K, 4) boxes of each image's class explained, x0, y0, x1, y1 in input pixels
    (`xaibench.data.boxes`), rows padded with NaN, or None when no boxes were given;
    pixel_std: the (3,) std of the normalisation, to express pixel-space amounts (ROAD's noise)
    in normalised space (None: treat the normalised space as pixel space);
    model: the model (returning logits) behind `score_fn`, for metrics of other libraries that call
    it themselves (None: not given); rows: (B,) the store rows of the images, which seed the
    metrics that sample (None: not given).
    """

    images: torch.Tensor
    saliency: torch.Tensor
    targets: torch.Tensor
    clean_scores: torch.Tensor
    score_fn: ScoreFn
    protocol: Protocol
    chunk_size: int | ChunkSize | None = None
    boxes: torch.Tensor | None = None
    pixel_std: tuple[float, float, float] | None = None
    model: nn.Module | None = None
    rows: np.ndarray | None = None
    _shared: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(self.images.shape)}")
        b, _, h, w = self.images.shape
        expected = {"saliency": (b, h, w), "targets": (b,), "clean_scores": (b,)}
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
            if tensor.device != self.images.device:
                raise ValueError(f"{name} is on {tensor.device}, images on {self.images.device}")
        boxes = self.boxes
        if boxes is not None and (boxes.ndim != 3 or boxes.shape[0] != b or boxes.shape[2] != 4):
            raise ValueError(f"boxes must have shape ({b}, K, 4), got {tuple(boxes.shape)}")
        if boxes is not None and boxes.device != self.images.device:
            raise ValueError(f"boxes are on {boxes.device}, images on {self.images.device}")
        if self.chunk_size is None:
            self.chunk_size = default_chunk_size(self.images.device)

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def with_chunk_size(self, chunk_size: int | ChunkSize) -> MetricContext:
        """The same batch at another chunk size, sharing this context's shared work."""
        other = dataclasses.replace(self, chunk_size=chunk_size)
        other._shared = self._shared
        return other

    def shared(self, key: Hashable, compute: Callable[[], T]) -> T:
        """`compute()` the first time `key` is asked for in this batch, the same object after."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]


@dataclass
class MetricResult:
    """Per-image outputs of one metric on a batch of B images.

    values: name -> (B,) float, the metric itself (NaN for a flagged image);
    curves: name -> (B, points), e.g. the insertion curve;
    flags: name -> (B,) bool, e.g. "nonfinite_map";
    diagnostics: name -> (B,) float, e.g. "tie_fraction".
    A key found in the results of two metrics holds equal values in both.
    """

    values: dict[str, torch.Tensor]
    curves: dict[str, torch.Tensor] = field(default_factory=dict)
    flags: dict[str, torch.Tensor] = field(default_factory=dict)
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)


class Metric(ABC):
    """A faithfulness metric: `score_batch(ctx)` returns `values[self.name]` for every image.

    `summary_scale` multiplies the per-image values in summaries (100 for metrics defined as
    percentages whose per-image values are fractions).
    """

    name: str
    higher_is_better: bool
    summary_scale: ClassVar[float] = 1.0
    needs_boxes: ClassVar[bool] = False
    """True for metrics that read `MetricContext.boxes` (the localisation metrics)."""
    chunks: ClassVar[str] = "perturbed"
    """The chunk size the metric's perturbed images run at, by name: metrics whose chunks cost
    alike share one, so that an out-of-memory in another's (ROAD's imputation) does not lower
    theirs (`MetricContext.with_chunk_size`)."""

    @abstractmethod
    def score_batch(self, ctx: MetricContext) -> MetricResult:
        """Evaluate the batch described by `ctx`."""

    def forwards(self, protocol: Protocol, n_pixels: int) -> dict[str, int] | None:
        """The model forwards this metric runs per image under `protocol` on images of
        `n_pixels` pixels, by the name of the work metrics share through `MetricContext.shared`
        (computed once however many metrics read it); the clean forward is not counted. None when
        the count is not known before the run (it depends on the images)."""
        return {}

    def configured(self, params: Mapping[str, Any]) -> Metric:
        """This metric with the settings `params` (name -> value). The native metrics take their
        settings from the protocol and have none of their own: ConfigError for any."""
        if params:
            raise ConfigError(
                f"{self.name} has no settings of its own (the protocol's settings are its "
                f"settings), got {', '.join(params)}",
                param="metric_params",
            )
        return self

    def key(self) -> str:
        """What a checkpoint of an evaluation with this metric must match to be resumed."""
        return self.name

    def settings(self) -> dict[str, Any] | None:
        """What the tables record of this metric's settings besides the protocol's (the library
        and its version, the settings given, the seed); None: nothing."""
        return None


def evaluation_forwards(metrics: Sequence[Metric], protocol: Protocol, n_pixels: int) -> int | None:
    """Model forwards per image of an evaluation with `metrics`: the clean forward and each
    shared piece of work once (`Metric.forwards`); None when a metric's count is not known."""
    shared: dict[str, int] = {}
    for metric in metrics:
        forwards = metric.forwards(protocol, n_pixels)
        if forwards is None:
            return None
        shared.update(forwards)
    return 1 + sum(shared.values())


def finite_maps(saliency: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B,) bool: the map has no NaN or Inf."""
    return torch.isfinite(saliency).flatten(1).all(dim=1)


def fill_rows(keep: torch.Tensor, rows: torch.Tensor, fill: float = float("nan")) -> torch.Tensor:
    """Spread rows (V, ...) computed for the V kept images back to (B, ...), `fill` elsewhere."""
    out = rows.new_full((keep.shape[0], *rows.shape[1:]), fill)
    out[keep] = rows
    return out


def metric_params(settings: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`METRIC.KEY=VALUE` settings -> {metric: {key: value}}; VALUE is read as JSON where it
    parses, else kept as text. The metrics check their keys (`Metric.configured`)."""
    chosen: dict[str, dict[str, Any]] = {}
    for setting in settings:
        target, sep, text = setting.partition("=")
        metric, _, key = target.rpartition(".")
        if not sep or not metric or not key:
            raise ConfigError(f"{setting!r}: write METRIC.KEY=VALUE", param="metric_params")
        chosen.setdefault(metric, {})[key] = json_or_text(setting, text, "metric_params")
    return chosen


METRICS: Registry[Metric] = Registry("metric")
"""Metric name -> metric instance (metrics hold no state; the protocol comes with the context)."""
