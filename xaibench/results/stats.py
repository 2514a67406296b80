"""Summaries of per-image metric tables: count, mean and two 95% confidence intervals per metric.

Each mean gets Student's t-interval (`ci_low`, `ci_high`) and a percentile bootstrap interval
(`boot_low`, `boot_high`, scipy.stats.bootstrap, seeded so tables reproduce). Printed tables show the
bootstrap one by default: the per-image values are bounded and often far from normal (% Increase is 0
or 1 per image), and the bootstrap interval stays inside the values' range where the t-interval does
not (e.g. [-7.5, 107.5] % on six images). Both are rough on a handful of images, where the
percentile interval is also the narrower one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from xaibench.core.choices import BOOTSTRAP_RESAMPLES, INTERVALS
from xaibench.core.errors import ConfigError
from xaibench.metrics.base import METRICS

BOOTSTRAP_METHOD = "percentile"
"""Percentile rather than BCa: BCa's jackknife costs O(n^2) per metric (minutes at 50,000 images),
and for the mean of thousands of images the two agree; on a few images neither is accurate."""
BOOTSTRAP_BATCH_ELEMENTS = 20_000_000
"""Resampled values held at once (160 MB of float64): bounds the bootstrap's memory for any N."""
INTERVAL_COLUMNS = {"bootstrap": ("boot_low", "boot_high"), "t": ("ci_low", "ci_high")}


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
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (group, metric): count, missing, mean, ci_low, ci_high, boot_low, boot_high.

    per_image: one row per image, one column per metric (NaN for a flagged image, counted in
    `missing` and left out of the rest), plus the `by` columns (e.g. model, method). The interval
    ci_low/ci_high is Student's t on the mean, mean +- t(n - 1) * sd / sqrt(n); boot_low/boot_high
    is `bootstrap_intervals` of each group (`resamples`, `seed`); both NaN for fewer than 2 values.
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
    half_width = t_half_width(table["sd"].to_numpy(), table["count"].to_numpy(), confidence)
    table["missing"] = table.pop("size") - table["count"]
    table["ci_low"] = table["mean"] - half_width
    table["ci_high"] = table["mean"] + half_width
    metrics = list(metric_columns)
    factors = np.array([scales.get(m, 1.0) for m in metrics])
    rows = []
    for key, group in per_image.groupby(by, sort=False) if by else [((), per_image)]:
        bounds = bootstrap_intervals(
            group[metrics].to_numpy(float) * factors, confidence, resamples, seed
        )
        rows += [(*key, m, lo, hi) for m, (lo, hi) in zip(metrics, bounds, strict=True)]
    boot = pd.DataFrame(rows, columns=[*by, "metric", "boot_low", "boot_high"])
    table = table.merge(boot, on=[*by, "metric"], how="left")
    columns = ["count", "missing", "mean", "ci_low", "ci_high", "boot_low", "boot_high"]
    return table[[*by, "metric", *columns]]


def t_half_width(sd: np.ndarray, count: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Half width of Student's t-interval on a mean, t(n - 1) * sd / sqrt(n), from each group's
    sample standard deviation `sd` (ddof 1) and value count `count` (same shapes); NaN for n < 2."""
    count = np.asarray(count, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = stats.t.ppf((1 + confidence) / 2, np.where(count > 1, count - 1, np.nan))
        return t * np.asarray(sd, dtype=float) / np.sqrt(count)


def bootstrap_intervals(
    values: np.ndarray,
    confidence: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """(N, M) values of M metrics over N images -> (M, 2) bootstrap interval of each column's mean.

    NaN values are left out. Columns with the same missing rows are resampled together in one
    vectorised scipy.stats.bootstrap call (`BOOTSTRAP_METHOD`); every call is seeded with `seed`,
    so a column's interval depends only on its values and the seed. Fewer than 2 values: NaN.
    """
    values = np.asarray(values, dtype=float)
    bounds = np.full((values.shape[1], 2), np.nan)
    finite = np.isfinite(values)
    patterns: dict[bytes, list[int]] = {}
    for column in range(values.shape[1]):
        patterns.setdefault(finite[:, column].tobytes(), []).append(column)
    for columns in patterns.values():
        sample = values[finite[:, columns[0]]][:, columns].T  # (metrics, n)
        if sample.shape[1] < 2:
            continue
        result = stats.bootstrap(
            (sample,),
            np.mean,
            axis=-1,
            vectorized=True,
            confidence_level=confidence,
            n_resamples=resamples,
            method=BOOTSTRAP_METHOD,
            batch=max(1, BOOTSTRAP_BATCH_ELEMENTS // sample.size),
            random_state=np.random.default_rng(seed),
        )
        bounds[columns, 0] = result.confidence_interval.low
        bounds[columns, 1] = result.confidence_interval.high
    return bounds


def summary_markdown(
    table: pd.DataFrame, float_format: str = "{:.4f}", right_align: Sequence[str] = ()
) -> str:
    """A GitHub Markdown table of `table` (numbers and the `right_align` columns right-aligned,
    NaN as "NA"), one line per row."""

    def cell(value: object) -> str:
        if isinstance(value, float | np.floating):
            return "NA" if np.isnan(value) else float_format.format(value)
        return str(value).replace("|", "\\|")

    numeric = [
        pd.api.types.is_numeric_dtype(dtype) or name in right_align
        for name, dtype in table.dtypes.items()
    ]
    lines = [
        "| " + " | ".join(cell(name) for name in table.columns) + " |",
        "|" + "|".join("---:" if is_number else ":---" for is_number in numeric) + "|",
    ]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def summary_wide(table: pd.DataFrame, digits: int = 3, interval: str = "bootstrap") -> pd.DataFrame:
    """`summarise`'s long table as one row per (model, method, protocol), one column per metric.

    Each cell reads "mean [low, high]" with the `interval` ("bootstrap" or "t"); rows and metrics
    keep their order of appearance.
    """
    low, high = interval_columns(interval)
    keys = [c for c in ("model", "method", "protocol") if c in table.columns]
    cells = table.assign(
        cell=[
            f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"
            for m, lo, hi in zip(table["mean"], table[low], table[high], strict=True)
        ]
    )
    wide = cells.pivot(index=keys, columns="metric", values="cell")
    rows = list(dict.fromkeys(cells[keys].itertuples(index=False, name=None)))
    wide = wide.reindex(
        pd.MultiIndex.from_tuples(rows, names=keys) if len(keys) > 1 else [r[0] for r in rows]
    )
    return wide[list(dict.fromkeys(table["metric"]))].reset_index().rename_axis(columns=None)


def interval_columns(interval: str) -> tuple[str, str]:
    """The (low, high) columns of `summarise`'s table holding the "bootstrap" or "t" interval."""
    if interval not in INTERVAL_COLUMNS:
        raise ConfigError(f"{interval!r}: use one of {', '.join(INTERVALS)}", param="interval")
    return INTERVAL_COLUMNS[interval]
