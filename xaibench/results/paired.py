"""Paired comparisons of methods evaluated on the same images: Wilcoxon p-values, win rates, ranks.

Input: a long per-image table (one row per image and method, as `evaluate` writes them and
`pd.concat` stacks them) with `image_id`, `method`, the grouping columns (model, protocol) and one
column per metric. Whether higher is better comes from the metric registry.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from xaibench.core.errors import ResultsError
from xaibench.metrics.base import METRICS
from xaibench.results.stats import default_scales

GROUP_COLUMNS = ("model", "protocol")


def higher_is_better(metric: str) -> bool:
    """The metric registry's direction of `metric` (an unknown name raises with close matches)."""
    return bool(METRICS.get(metric).higher_is_better)


def win_rate(a: np.ndarray, b: np.ndarray, higher_better: bool) -> float:
    """Share of images where A beats B, ties counted as half a win: (wins + ties / 2) / n.

    a, b: (n,) the metric of the two methods on the same images, finite.
    """
    if len(a) == 0:
        return float("nan")
    better = a > b if higher_better else a < b
    return float((better.sum() + 0.5 * (a == b).sum()) / len(a))


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the differences a - b (scipy.stats.wilcoxon).

    Zero differences are dropped (Wilcoxon's own treatment); scipy picks the exact distribution for
    small samples without ties and the normal approximation otherwise. NaN when no difference is
    non-zero, since the test then has nothing to rank.
    """
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if not np.any(differences != 0):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sample size too small for normal approx."
        return float(stats.wilcoxon(differences, zero_method="wilcox").pvalue)


def check_same_images(per_image: pd.DataFrame, by: Sequence[str] = GROUP_COLUMNS) -> None:
    """ResultsError unless every method of each group was evaluated on the same set of images
    under the same protocol settings. Names the files when the table has a `source` column."""

    def name(rows: pd.DataFrame) -> str:
        label = rows["method"].iloc[0]
        return f"{rows['source'].iloc[0]} ({label})" if "source" in rows else str(label)

    twice = per_image.duplicated([*by, "method", "image_id"], keep=False)
    if twice.any():
        rows = per_image[twice]
        raise ResultsError(
            f"{name(rows)} holds image {rows['image_id'].iloc[0]!r} more than once for one model, "
            "protocol and method; compare each evaluation once (drop the repeated file)"
        )
    for key, group in per_image.groupby(list(by), sort=False):
        methods = [rows for _, rows in group.groupby("method", sort=False)]
        first = methods[0]
        for other in methods[1:]:
            if "protocol_settings" in group and set(first["protocol_settings"]) != set(
                other["protocol_settings"]
            ):
                raise ResultsError(
                    f"{name(first)} and {name(other)} share the protocol name {key[-1]!r} but not "
                    "its settings; re-evaluate one of them under the other's settings"
                )
            mine, theirs = set(first["image_id"]), set(other["image_id"])
            if mine != theirs:
                only = sorted(mine ^ theirs)
                raise ResultsError(
                    f"{name(first)} ({len(mine)} images) and {name(other)} ({len(theirs)} images) "
                    f"were evaluated on different images (e.g. {only[0]!r} is in one only); paired "
                    "tests need the same images: evaluate both on the same `data_dir` and `limit`"
                )


def _matrix(group: pd.DataFrame, metric: str) -> pd.DataFrame:
    """(images, methods) values of one metric, methods in order of appearance."""
    methods = list(dict.fromkeys(group["method"]))
    return group.pivot(index="image_id", columns="method", values=metric)[methods]


def paired_comparisons(
    per_image: pd.DataFrame,
    metrics: Sequence[str],
    *,
    by: Sequence[str] = GROUP_COLUMNS,
    scales: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """One row per (group, metric, pair of methods A before B in order of appearance) with at
    least one image where both are finite.

    Columns: n (images where both are finite), mean_diff (mean of A - B, in summary units),
    win_rate (of A over B, ties half; `win_rate`), wilcoxon_p (`wilcoxon_p`).
    """
    check_same_images(per_image, by)
    scales = default_scales() if scales is None else scales
    rows = []
    for key, group in per_image.groupby(list(by), sort=False):
        for metric in metrics:
            matrix = _matrix(group, metric) * scales.get(metric, 1.0)
            for first, second in itertools.combinations(matrix.columns, 2):
                both = matrix[[first, second]].dropna().to_numpy()
                if not len(both):
                    continue
                a, b = both[:, 0], both[:, 1]
                rows.append(
                    (
                        *key,
                        metric,
                        first,
                        second,
                        len(both),
                        float(np.mean(a - b)),
                        win_rate(a, b, higher_is_better(metric)),
                        wilcoxon_p(a, b),
                    )
                )
    columns = ["metric", "method_a", "method_b", "n", "mean_diff", "win_rate", "wilcoxon_p"]
    return pd.DataFrame(rows, columns=[*by, *columns])


def rankings(
    per_image: pd.DataFrame,
    metrics: Sequence[str],
    *,
    by: Sequence[str] = GROUP_COLUMNS,
    scales: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """The methods of each (group, metric) best first.

    Columns: rank (1 = best mean, equal means share a rank; <NA>, listed last, for a method with
    no finite value), method, mean (summary units),
    mean_rank (average over images of the method's rank on that image, 1 = best, ties averaged;
    images where every method is finite), p_next (Wilcoxon p against the next method down).
    """
    check_same_images(per_image, by)
    scales = default_scales() if scales is None else scales
    rows = []
    for key, group in per_image.groupby(list(by), sort=False):
        for metric in metrics:
            higher = higher_is_better(metric)
            matrix = _matrix(group, metric) * scales.get(metric, 1.0)
            means = matrix.mean()
            order = means.sort_values(ascending=not higher, kind="stable").index
            complete = matrix.dropna().to_numpy()
            per_image_ranks = stats.rankdata(-complete if higher else complete, axis=1)
            mean_ranks = (
                per_image_ranks.mean(axis=0) if len(complete) else [np.nan] * complete.shape[1]
            )
            mean_rank = dict(zip(matrix.columns, mean_ranks, strict=True))
            ranks = means.rank(method="min", ascending=not higher)
            for position, method in enumerate(order):
                following = order[position + 1] if position + 1 < len(order) else None
                pair = matrix[[method, following]].dropna().to_numpy() if following else None
                rows.append(
                    (
                        *key,
                        metric,
                        int(ranks[method]) if np.isfinite(ranks[method]) else pd.NA,
                        method,
                        float(means[method]),
                        float(mean_rank[method]),
                        wilcoxon_p(pair[:, 0], pair[:, 1]) if following else np.nan,
                    )
                )
    columns = ["metric", "rank", "method", "mean", "mean_rank", "p_next"]
    return pd.DataFrame(rows, columns=[*by, *columns]).astype({"rank": "Int64"})
