"""The choices and defaults of settings that the CLI's options show, as plain values.

Each is defined here once and imported by the module that uses it; this module imports nothing, so
the CLI builds every option (and `--help`) from it without importing torch.
"""

from __future__ import annotations

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
"""Forward precisions (xaibench/core/precision.py)."""
PRECISION_CHOICES = ("auto", *PRECISIONS)
"""What a user may ask for: a precision, or "auto", the device's `AUTO_PRECISION`."""
AUTO_PRECISION = {"cuda": "tf32"}
"""The precision "auto" means, by device type (fp32 on the others): on CUDA, TF32 convolutions and
matmuls, PyTorch's own default for convolutions."""

PROTOCOL_SETTINGS: dict[str, dict[str, int | str | bool]] = {
    "polycam": {
        "step": 224,
        "insertion_substrate": "blur",
        "deletion_substrate": "blur",
        "include_start": False,
        "auc": "mean",
    },
    "rise": {
        "step": 224,
        "insertion_substrate": "rise_blur",
        "deletion_substrate": "zeros",
        "include_start": True,
        "auc": "trapezoid",
    },
}
"""The named evaluation protocols and the metric settings each sets; the others keep the defaults
of `Protocol` (xaibench/metrics/protocols.py, which builds `PROTOCOLS` from this table)."""

PREPROCESSINGS = ("protocol", "model")
"""How images become a model's input: the protocol's preprocessing (the default: a direct resize,
the model's mean and std) or the model's own, the one its weights were evaluated with
(xaibench/data/preprocess.py, docs/preprocessing.md)."""

DEFAULT_METRICS = ("insertion", "deletion", "ins_del", "avg_drop", "increase")
"""The metrics `evaluate_stores` computes unless told otherwise."""

BOOTSTRAP_RESAMPLES = 9999
"""Bootstrap resamples per interval (xaibench/results/stats.py)."""
INTERVALS = ("bootstrap", "t")
"""The intervals a summary has: the percentile bootstrap and Student's t."""

DEFAULT_THRESHOLD = 0.5
"""The sanity check flags a method whose mean Spearman correlation at the last stage is above it."""

LATEX_STYLES = ("brackets", "pm")
"""LaTeX cells as mean [low, high] or mean ± half-width (xaibench/report/tables.py)."""
DEFAULT_GRID_IMAGES = 4
"""Images in the report's overlay grid."""

CHANNEL_ORDERS = ("top", "first")
"""Which channels an activation grid shows (xaibench/visualize/activations.py)."""
PARAMETERISATION_NAMES = ("pixel", "fourier")
"""Feature visualisation's image parameterisations, in the order of
xaibench/visualize/parameterisation.py's `PARAMETERISATIONS`."""
