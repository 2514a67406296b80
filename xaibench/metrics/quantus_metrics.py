"""Metrics of the Quantus library (docs/metrics.md#quantus) as `quantus.NAME` metrics.

A `QuantusMetric` calls the Quantus class NAME through Quantus's own API,
`metric(model=..., x_batch=..., y_batch=..., a_batch=..., device=..., softmax=...)`, on each batch:
the normalised images (B, 3, H, W), the classes explained (B,) and the stored maps at input size
(B, 1, H, W), as NumPy arrays; Quantus runs the model itself. Its settings are the class's
constructor parameters; Quantus is imported only when a metric is configured or scored.

Only the metrics whose value per image can be computed from the stored maps (and the model) are
supported (`SUPPORTED`); `REFUSED` says for every other Quantus metric why it is not.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from xaibench.core.errors import ConfigError
from xaibench.metrics.base import (
    METRICS,
    Metric,
    MetricContext,
    MetricResult,
    finite_maps,
)
from xaibench.metrics.protocols import Protocol

PREFIX = "quantus."
EXTRA = "xaibench[quantus]"
CHANNELS = 3
"""Quantus counts the features of an image as its C * H * W input values."""

Forwards = Callable[[Mapping[str, Any], int], int]
"""(the class's effective settings, pixels per image) -> model forwards per image."""


def _steps(settings: Mapping[str, Any], n_pixels: int) -> int:
    return math.ceil(CHANNELS * n_pixels / settings["features_in_step"])


@dataclass(frozen=True)
class Supported:
    """A Quantus metric xaibench runs: its direction (as Quantus's `score_direction`) and its
    model forwards per image (None: they depend on the image)."""

    higher_is_better: bool
    forwards: Forwards | None
    what: str


SUPPORTED: dict[str, Supported] = {
    "Sparseness": Supported(True, lambda s, n: 0, "Gini index of the map (maps only)"),
    "Complexity": Supported(False, lambda s, n: 0, "entropy of the map (maps only)"),
    "EffectiveComplexity": Supported(False, lambda s, n: 0, "values above eps (maps only)"),
    "FaithfulnessCorrelation": Supported(
        True,
        lambda s, n: s["nr_runs"] + 1,
        "correlation of random subsets' attribution with the score drop (sampled)",
    ),
    "FaithfulnessEstimate": Supported(
        True,
        lambda s, n: _steps(s, n) + 1,
        "correlation of each step's attribution with its score drop",
    ),
    "Monotonicity": Supported(
        True, _steps, "the score rises at every step as features are added, least first (0 or 1)"
    ),
    "MonotonicityCorrelation": Supported(
        True,
        lambda s, n: s["nr_samples"] * _steps(s, n) + 1,
        "correlation of attribution with the score's variance under perturbation (sampled)",
    ),
    "Completeness": Supported(
        True, lambda s, n: 2, "attributions sum to the score difference to a baseline (0 or 1)"
    ),
    "Infidelity": Supported(
        False, None, "squared error of attribution and score change under noise (sampled)"
    ),
}
"""Quantus class name -> how xaibench runs it."""

_EXPLAINS = (
    "re-explains perturbed inputs (Quantus's explain_func), and a store holds the maps of the clean "
    "images only"
)
_LOCALISES = (
    "needs segmentation masks (Quantus's s_batch); the native pointing_game and energy_pointing "
    "score maps against bounding boxes"
)
_RANDOMISES = "randomises the model's weights and re-explains; `xaibench sanity` does this"
REFUSED: dict[str, str] = {
    **dict.fromkeys(
        (
            "MaxSensitivity",
            "AvgSensitivity",
            "LocalLipschitzEstimate",
            "Continuity",
            "Consistency",
            "RelativeInputStability",
            "RelativeOutputStability",
            "RelativeRepresentationStability",
            "RandomLogit",
            "InputInvariance",
        ),
        _EXPLAINS,
    ),
    **dict.fromkeys(
        (
            "PointingGame",
            "AttributionLocalisation",
            "TopKIntersection",
            "RelevanceMassAccuracy",
            "RelevanceRankAccuracy",
            "AUC",
            "Focus",
        ),
        _LOCALISES,
    ),
    **dict.fromkeys(
        ("MPRT", "ModelParameterRandomisation", "SmoothMPRT", "EfficientMPRT"), _RANDOMISES
    ),
    "Sufficiency": "its value for an image depends on the other images of the batch",
    "BatchSufficiency": "its value for an image depends on the other images of the batch",
    "SensitivityN": "gives one correlation per subset size over the whole batch, not one per image",
    "ROAD": "gives one curve for the whole batch; the native road_morf and road_lerf give one "
    "value per image",
    "PixelFlipping": "gives a curve per image (its area option calls np.trapz, which NumPy 2 "
    "removed); the native deletion is its area",
    "RegionPerturbation": "gives a curve per image; the native deletion is its area",
    "Selectivity": "gives a curve per image; the native deletion is its area",
    "NonSensitivity": "fails for features_in_step > 1 in Quantus 0.6, and with 1 it runs C * H * W "
    "forwards per image",
    "IROF": "fails on 3-channel images in Quantus 0.6 (its segment mask has one channel) and "
    "calls np.trapz, which NumPy 2 removed",
}
"""Quantus metrics xaibench does not run -> why."""

FIXED = {"return_aggregate": False, "display_progressbar": False}
"""Constructor settings xaibench sets: one value per image, no progress bar."""
RESERVED = ("aggregate_func", "default_plot_func", "return_auc_per_sample", "kwargs")
"""Constructor parameters that do not apply to one value per image."""
SEED = "seed"
"""xaibench's own setting of every Quantus metric: the seed of NumPy's global generator."""


def quantus_module() -> Any:
    """The quantus package; ConfigError naming the extra to install when it is missing."""
    try:
        import quantus
    except ImportError:
        raise ConfigError(
            f"the Quantus metrics need the quantus package: pip install '{EXTRA}'",
            param="metrics",
        ) from None
    return quantus


class QuantusMetric(Metric):
    """The Quantus metric `quantus.NAME` with the settings `params` and the seed `seed`.

    Values: `values[name]` (B,) float64 (Quantus's booleans as 0 or 1); flags: "nonfinite_map"
    (NaN, not passed to Quantus). The batch goes to Quantus as one batch (`batch_size` = B), so
    every perturbation step is one forward of B images. NumPy's global generator, which Quantus's
    sampling draws from, is seeded per batch from (`seed`, the batch's first store row) and given
    back its state after: a resumed evaluation draws what an uninterrupted one drew for the same
    batches, and the values depend on which images share a batch. Quantus works on NumPy arrays on
    the host, so every batch is copied to the host and every perturbation step back to the device
    (inside Quantus); the values come back to the device once per batch.
    """

    def __init__(self, name: str, params: Mapping[str, Any] | None = None, seed: int = 0):
        self.name = name
        self.class_name = name[len(PREFIX) :]
        self.spec = SUPPORTED[self.class_name]
        self.higher_is_better = self.spec.higher_is_better
        better = "higher" if self.higher_is_better else "lower"
        self.help = f"Quantus {self.class_name}: {self.spec.what} ({better} is better)"
        self.params = dict(params or {})
        self.seed = seed
        self._metric: Any = None
        self._defaults: dict[str, Any] = {}

    def configured(self, params: Mapping[str, Any]) -> QuantusMetric:
        """This metric with `params`: constructor parameters of the Quantus class (a `*_func`
        given as text names a function of quantus) and `seed`; ConfigError for an unknown one."""
        quantus = quantus_module()
        cls = getattr(quantus, self.class_name, None)
        if cls is None:
            raise ConfigError(
                f"{self.name}: quantus {quantus.__version__} has no class {self.class_name}",
                param="metrics",
            )
        signature = inspect.signature(cls).parameters
        accepted = sorted({*signature} - {*FIXED, *RESERVED} | {SEED})
        settings = dict(params)
        seed = settings.pop(SEED, 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(
                f"{self.name}.seed: give an integer, got {seed!r}", param="metric_params"
            )
        for key in settings:
            if key not in accepted:
                raise ConfigError(
                    f"{self.name} has no setting {key!r} (its settings: {', '.join(accepted)})",
                    param="metric_params",
                )
        built = QuantusMetric(self.name, settings, seed)
        kwargs = {key: _value(quantus, self.name, key, value) for key, value in settings.items()}
        try:
            built._metric = cls(**{"disable_warnings": True, **kwargs, **FIXED})
        except (AssertionError, TypeError, ValueError) as error:
            raise ConfigError(f"{self.name}: {error}", param="metric_params") from None
        built._defaults = {
            key: p.default
            for key, p in signature.items()
            if p.default is not inspect.Parameter.empty
        }
        return built

    def key(self) -> str:
        return f"{self.name}({json.dumps(self.settings(), sort_keys=True)})"

    def settings(self) -> dict[str, Any]:
        """library, version, class, params (those given) and seed."""
        return {
            "library": "quantus",
            "version": quantus_module().__version__,
            "class": self.class_name,
            "params": self.params,
            "seed": self.seed,
        }

    def forwards(self, protocol: Protocol, n_pixels: int) -> dict[str, int] | None:
        """From the class's settings (`SUPPORTED`); None where they depend on the image."""
        if self.spec.forwards is None:
            return None
        settings = {**self._configured()._defaults, **self.params}
        return {self.name: self.spec.forwards(settings, n_pixels)}

    def _configured(self) -> QuantusMetric:
        return (
            self if self._metric is not None else self.configured({**self.params, SEED: self.seed})
        )

    def score_batch(self, ctx: MetricContext) -> MetricResult:
        if ctx.model is None:
            raise ValueError(f"{self.name} needs the model in the batch context")
        metric = self._configured()._metric
        keep = finite_maps(ctx.saliency)
        values = torch.full((ctx.batch_size,), float("nan"), dtype=torch.float64)
        if keep.any():
            kept = keep.cpu().numpy()
            first_row = 0 if ctx.rows is None else int(ctx.rows[0])
            state = np.random.get_state()
            np.random.seed(np.random.SeedSequence([self.seed, first_row]).generate_state(1)[0])
            try:
                scores = metric(
                    model=ctx.model,
                    x_batch=ctx.images.float().cpu().numpy()[kept],
                    y_batch=ctx.targets.cpu().numpy()[kept],
                    a_batch=ctx.saliency.cpu().numpy()[kept][:, None],
                    device=str(ctx.images.device),
                    softmax=ctx.protocol.score == "probability",
                    channel_first=True,
                    batch_size=int(kept.sum()),
                )
            except (AssertionError, ValueError) as error:
                raise ConfigError(
                    f"{self.name} failed on a batch: {error}; see its settings in Quantus's "
                    "documentation",
                    param="metric_params",
                ) from None
            finally:
                np.random.set_state(state)
            values[torch.from_numpy(kept)] = torch.from_numpy(np.asarray(scores, dtype=np.float64))
        return MetricResult(
            values={self.name: values.to(ctx.images.device)}, flags={"nonfinite_map": ~keep}
        )


def _value(quantus: Any, name: str, key: str, value: Any) -> Any:
    """A setting as the Quantus class takes it: a `*_func` named by text is that quantus function."""
    if not (key.endswith("_func") and isinstance(value, str)):
        return value
    function = getattr(quantus, value, None)
    if not callable(function):
        raise ConfigError(
            f"{name}.{key}: quantus has no function {value!r} (e.g. quantus.{key} functions such "
            "as baseline_replacement_by_indices, correlation_pearson, normalise_by_max)",
            param="metric_params",
        )
    return function


def resolve_quantus_metric(member: str, param: str | None) -> QuantusMetric | None:
    """`quantus.MEMBER` -> its QuantusMetric (without importing quantus), None for a name Quantus
    has no metric of; ConfigError saying why for a Quantus metric xaibench does not run."""
    if member in REFUSED:
        raise ConfigError(
            f"{PREFIX}{member} is not supported: it {REFUSED[member]}", param=param or "metrics"
        )
    return QuantusMetric(PREFIX + member) if member in SUPPORTED else None


METRICS.add_family(
    PREFIX,
    resolve_quantus_metric,
    lambda: list(SUPPORTED),
    help="a metric of the Quantus library (pip install 'xaibench[quantus]'), docs/metrics.md",
    placeholder="NAME",
)
