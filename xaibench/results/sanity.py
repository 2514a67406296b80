"""Sanity-check results: the table's columns, the result of one method's run, per-stage summaries."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from xaibench.core.choices import DEFAULT_THRESHOLD
from xaibench.results.stats import t_half_width
from xaibench.sanity.stages import Stage

SANITY_STATISTICS = ("spearman", "spearman_abs", "ssim")
"""The similarities of each map to the original one (`map_similarity`)."""
SANITY_COLUMNS = ("image_id", "stage", "layer", *SANITY_STATISTICS)
"""The columns of a sanity table, in order."""
UNDEFINED_SIMILARITY = 0.0
"""What an undefined similarity (NaN: a map that became constant) counts as: no association, such
a map has changed."""


@dataclass
class SanityResult:
    """table: one row per (image, stage) with `SANITY_COLUMNS`; stages: output first."""

    method: str
    table: pd.DataFrame
    stages: list[Stage]
    threshold: float = DEFAULT_THRESHOLD

    @property
    def final_spearman(self) -> float:
        """Mean Spearman correlation with the original maps once every stage is randomised: the
        last stage's `verdict_summary` mean (an undefined correlation counts as 0)."""
        summary = verdict_summary(self.table)
        last = summary[summary["stage"] == summary["stage"].max()]
        means = last.loc[last["statistic"] == "spearman", "mean"]
        return float(means.iloc[0]) if len(means) else float("nan")

    @property
    def flagged(self) -> bool:
        """The maps hardly change when the model is randomised (or never change at all)."""
        return bool(self.final_spearman > self.threshold)


def stage_summary(table: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per stage and statistic: layer, mean, ci_low, ci_high (Student's t on the mean,
    `t_half_width`); NaN values are left out (a NaN layer, stage 0 read from a CSV, is kept)."""
    long = table.melt(
        id_vars=["stage", "layer"], value_vars=list(SANITY_STATISTICS), var_name="statistic"
    )
    summary = (
        long.groupby(["stage", "layer", "statistic"], sort=False, dropna=False)["value"]
        .agg(mean="mean", sd="std", count="count")
        .reset_index()
        .sort_values(["stage", "layer"], kind="stable", ignore_index=True)
    )
    half = t_half_width(summary.pop("sd").to_numpy(), summary.pop("count").to_numpy(), confidence)
    summary["ci_low"] = summary["mean"] - half
    summary["ci_high"] = summary["mean"] + half
    return summary


def verdict_summary(table: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """`stage_summary` of the values the verdict averages, each NaN counted as
    `UNDEFINED_SIMILARITY`, plus per stage and statistic `finite` (images whose similarity is
    defined) and `images` (all images). The plots draw these means, so the last stage's Spearman
    point is `SanityResult.final_spearman`."""
    counted = table.fillna({name: UNDEFINED_SIMILARITY for name in SANITY_STATISTICS})
    summary = stage_summary(counted, confidence)
    counts = (
        table.melt(id_vars=["stage"], value_vars=list(SANITY_STATISTICS), var_name="statistic")
        .groupby(["stage", "statistic"])["value"]
        .agg(finite="count", images="size")
        .reset_index()
    )
    return summary.merge(counts, on=["stage", "statistic"], how="left")
