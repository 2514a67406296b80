"""Summaries of per-image metric tables: count, mean and a 95% confidence interval per metric."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from xaibench.metrics.base import METRICS


def default_scales() -> dict[str, float]:
    """Metric name -> summary factor: 100 for the percent metrics (avg_drop, increase), else 1."""
    return {entry.name: entry.obj.summary_scale for entry in METRICS}


def summarise(
    per_image: pd.DataFrame,
    metric_columns: Sequence[str],
    *,
    by: Sequence[str] = (),
    scales: Mapping[str, float] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per (group, metric): count, missing, mean, ci_low, ci_high.

    per_image: one row per image, one column per metric (NaN for a flagged image, counted in
    `missing` and left out of the rest), plus the `by` columns (e.g. model, method). The interval
    is Student's t on the mean, mean +- t(n - 1) * sd / sqrt(n), NaN for fewer than 2 values.
    Columns named in `scales` (default: `default_scales()`) are multiplied by their factor, so
    avg_drop and increase come out in percent as their definitions say.
    """
    scales = default_scales() if scales is None else scales
    by = list(by)
    long = per_image.melt(
        id_vars=by, value_vars=list(metric_columns), var_name="metric", value_name="value"
    )
    long["value"] = long["value"].astype(float) * long["metric"].map(scales).fillna(1.0)
    table = (
        long.groupby([*by, "metric"], sort=False)["value"]
        .agg(count="count", size="size", mean="mean", sd="std")
        .reset_index()
    )
    if by:
        table = table.sort_values(by, kind="stable", ignore_index=True)
    count = table["count"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        t = stats.t.ppf((1 + confidence) / 2, np.where(count > 1, count - 1, np.nan))
        half_width = t * table["sd"].to_numpy() / np.sqrt(count)
    table["missing"] = table.pop("size") - table["count"]
    table["ci_low"] = table["mean"] - half_width
    table["ci_high"] = table["mean"] + half_width
    return table[[*by, "metric", "count", "missing", "mean", "ci_low", "ci_high"]]


def summary_markdown(table: pd.DataFrame, float_format: str = "{:.4f}") -> str:
    """A GitHub Markdown table of `table` (numbers right-aligned, NaN as "NA"), one line per row."""

    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            return "NA" if np.isnan(value) else float_format.format(value)
        return str(value).replace("|", "\\|")

    numeric = [pd.api.types.is_numeric_dtype(dtype) for dtype in table.dtypes]
    lines = [
        "| " + " | ".join(cell(name) for name in table.columns) + " |",
        "|" + "|".join("---:" if is_number else ":---" for is_number in numeric) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def summary_wide(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """`summarise`'s long table as one row per (model, method, protocol), one column per metric.

    Each cell reads "mean [ci_low, ci_high]"; rows and metrics keep their order of appearance.
    """
    keys = [c for c in ("model", "method", "protocol") if c in table.columns]
    cells = table.assign(
        cell=[
            f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
            for m, lo, hi in zip(table["mean"], table["ci_low"], table["ci_high"], strict=True)
        ]
    )
    wide = cells.pivot(index=keys, columns="metric", values="cell")
    rows = list(dict.fromkeys(cells[keys].itertuples(index=False, name=None)))
    wide = wide.reindex(
        pd.MultiIndex.from_tuples(rows, names=keys) if len(keys) > 1 else [r[0] for r in rows]
    )
    return wide[list(dict.fromkeys(table["metric"]))].reset_index().rename_axis(columns=None)
