"""The sanity check's figure: mean similarity to the original map per randomisation stage, drawn
from what the verdict uses (`verdict_summary`); `xaibench sanity` and the report draw it."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from xaibench.results.sanity import SANITY_STATISTICS, verdict_summary

SANITY_TITLES = {
    "spearman": "Spearman rank correlation",
    "spearman_abs": "Spearman rank correlation of |map|",
    "ssim": "SSIM",
}
SANITY_YLIM = 1.1
"""The sanity panels span [-1.1, 1.1]: every similarity lies in [-1, 1], with room for the n."""


def sanity_figure(results: Mapping[str, pd.DataFrame], threshold: float | None = None) -> Figure:
    """Mean similarity to the original map vs randomisation stage, one line per method.

    results: method -> the long table of `xaibench sanity` (image_id, stage, layer, spearman,
    spearman_abs, ssim; stage 0 = the original model). One panel per similarity, each point the
    `verdict_summary` mean (a NaN counts as 0, as in the verdict) with its 95% t-interval as a
    band and, under it, n: the images whose similarity is defined. The y axis spans the whole
    range of the similarities, [-1, 1]; the x ticks name the layer randomised last at each stage.
    `threshold` is drawn on the Spearman panel.
    """
    summaries = {method: verdict_summary(frame) for method, frame in results.items()}
    stages: dict[int, str] = {}
    for summary in summaries.values():
        for stage, layer in summary[["stage", "layer"]].itertuples(index=False):
            stages.setdefault(int(stage), "original" if int(stage) == 0 else str(layer))
    order = sorted(stages)
    panel = min(max(4.6, 0.2 * len(order) + 1.6), 10.0)  # inches: room for the ticks, capped
    figure = Figure(figsize=(panel * len(SANITY_STATISTICS), 4.4), layout="constrained")
    colours = colormaps["tab10"]
    for column, name in enumerate(SANITY_STATISTICS):
        axes = figure.add_subplot(1, len(SANITY_STATISTICS), column + 1)
        for index, (method, summary) in enumerate(summaries.items()):
            rows = summary[summary["statistic"] == name]
            colour = colours(index % colours.N)
            images = int(rows["images"].max()) if len(rows) else 0
            axes.plot(
                rows["stage"],
                rows["mean"],
                marker="o",
                ms=3,
                lw=1.4,
                color=colour,
                label=f"{method} ({images} images)",
            )
            axes.fill_between(
                rows["stage"], rows["ci_low"], rows["ci_high"], color=colour, alpha=0.15, lw=0
            )
            for stage, mean, finite in rows[["stage", "mean", "finite"]].itertuples(index=False):
                axes.annotate(
                    str(finite),
                    (stage, mean),
                    xytext=(0, -9),
                    textcoords="offset points",
                    ha="center",
                    fontsize=7,
                    color=colour,
                )
        if threshold is not None and name == "spearman":
            axes.axhline(threshold, color="grey", linestyle=":", lw=1, label="threshold")
        axes.set_xticks(order, [stages[s] for s in order], rotation=60, ha="right", fontsize=7)
        axes.set_title(SANITY_TITLES[name])
        axes.set_xlabel("layers randomised, from the top (cascading)")
        axes.set_ylabel("mean over images (undefined as 0)\nn under a point: images with a value")
        axes.set_ylim(-SANITY_YLIM, SANITY_YLIM)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8, frameon=False)
    return figure
