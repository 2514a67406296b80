"""Metrics (docs/metrics): insertion, deletion, ins_del, avg_drop, increase, ROAD MoRF and LeRF,
the pointing game and the energy-based pointing game; the metrics of the Quantus library as
`quantus.NAME` (xaibench.metrics.quantus_metrics).

Importing this package registers every metric in `METRICS` (and the `quantus.` family, without
importing quantus).
"""

from xaibench.core.batching import apply_in_chunks
from xaibench.metrics.base import (
    METRICS,
    Metric,
    MetricContext,
    MetricResult,
    ScoreFn,
    default_chunk_size,
    metric_params,
    saliency_at_input_size,
    score_function,
)
from xaibench.metrics.causal import CausalMetric, InsDel, causal_curves, pixel_ranks
from xaibench.metrics.confidence import AverageDrop, IncreaseInConfidence, explanation_scores
from xaibench.metrics.localisation import EnergyPointingGame, PointingGame, near_boxes
from xaibench.metrics.protocols import PROTOCOLS, SUBSTRATES, Protocol, get_protocol
from xaibench.metrics.quantus_metrics import QuantusMetric
from xaibench.metrics.road import RoadMetric, linear_imputation

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "SUBSTRATES",
    "AverageDrop",
    "CausalMetric",
    "EnergyPointingGame",
    "IncreaseInConfidence",
    "InsDel",
    "Metric",
    "MetricContext",
    "MetricResult",
    "PointingGame",
    "Protocol",
    "QuantusMetric",
    "RoadMetric",
    "ScoreFn",
    "apply_in_chunks",
    "causal_curves",
    "default_chunk_size",
    "explanation_scores",
    "get_protocol",
    "linear_imputation",
    "metric_params",
    "near_boxes",
    "pixel_ranks",
    "saliency_at_input_size",
    "score_function",
]
