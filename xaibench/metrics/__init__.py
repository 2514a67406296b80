"""Faithfulness metrics (docs/metrics): insertion, deletion, ins_del, avg_drop, increase.

Importing this package registers every metric in `METRICS`.
"""

from xaibench.batching import apply_in_chunks
from xaibench.metrics.base import (
    METRICS,
    Metric,
    MetricContext,
    MetricResult,
    ScoreFn,
    default_chunk_size,
    saliency_at_input_size,
    score_function,
)
from xaibench.metrics.causal import CausalMetric, InsDel, causal_curves, pixel_ranks
from xaibench.metrics.confidence import AverageDrop, IncreaseInConfidence, explanation_scores
from xaibench.metrics.protocols import PROTOCOLS, SUBSTRATES, Protocol, get_protocol
from xaibench.metrics.stats import summarise, summary_markdown

__all__ = [
    "METRICS",
    "PROTOCOLS",
    "SUBSTRATES",
    "AverageDrop",
    "CausalMetric",
    "IncreaseInConfidence",
    "InsDel",
    "Metric",
    "MetricContext",
    "MetricResult",
    "Protocol",
    "ScoreFn",
    "apply_in_chunks",
    "causal_curves",
    "default_chunk_size",
    "explanation_scores",
    "get_protocol",
    "pixel_ranks",
    "saliency_at_input_size",
    "score_function",
    "summarise",
    "summary_markdown",
]
