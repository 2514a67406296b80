"""Paired comparisons: Wilcoxon against a hand-computed case, win rates, rankings, refusals."""

import numpy as np
import pandas as pd
import pytest

from xaibench.core.errors import ResultsError
from xaibench.results.paired import paired_comparisons, rankings, wilcoxon_p, win_rate


def long_table(values: dict[str, list[float]], metric: str = "insertion") -> pd.DataFrame:
    """One row per (image, method) of a single model and protocol."""
    return pd.concat(
        pd.DataFrame(
            {
                "image_id": [f"img{i}.png" for i in range(len(v))],
                "model": "m",
                "protocol": "polycam",
                "method": method,
                metric: v,
            }
        )
        for method, v in values.items()
    )


def test_wilcoxon_exact_p_of_a_hand_computed_case():
    # Differences 1, -2, 3, 4, 5: ranks 1..5, W- = 2. Of the 32 equally likely sign patterns,
    # 3 have W- <= 2 ({}, {1}, {2}), so the exact two-sided p is 2 * 3 / 32.
    a = np.array([11.0, 8.0, 13.0, 14.0, 15.0])
    b = np.full(5, 10.0)
    assert wilcoxon_p(a, b) == pytest.approx(2 * 3 / 32)
    assert wilcoxon_p(b, a) == pytest.approx(2 * 3 / 32)
    assert np.isnan(wilcoxon_p(a, a))


def test_win_rate_counts_ties_as_half_and_follows_the_metric_direction():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 2.0, 5.0, 1.0])
    assert win_rate(a, b, higher_better=True) == pytest.approx((2 + 0.5) / 4)
    assert win_rate(a, b, higher_better=False) == pytest.approx((1 + 0.5) / 4)
    assert win_rate(b, a, higher_better=True) == pytest.approx(1 - (2 + 0.5) / 4)


def test_paired_comparisons_use_each_metrics_direction_and_summary_units():
    insertion = long_table({"tgrad": [0.9, 0.8, 0.7, 0.6], "random": [0.5, 0.8, 0.9, 0.1]})
    drop = long_table({"tgrad": [0.1, 0.2, 0.3, 0.4], "random": [0.5, 0.2, 0.1, 0.9]}, "avg_drop")
    table = insertion.merge(drop, on=["image_id", "model", "protocol", "method"])
    pairs = paired_comparisons(table, ["insertion", "avg_drop"]).set_index("metric")
    assert pairs.loc["insertion", ["method_a", "method_b", "n"]].tolist() == ["tgrad", "random", 4]
    assert pairs.loc["insertion", "win_rate"] == pytest.approx((2 + 0.5) / 4)
    assert pairs.loc["avg_drop", "win_rate"] == pytest.approx((2 + 0.5) / 4)  # lower is better
    assert pairs.loc["avg_drop", "mean_diff"] == pytest.approx(100 * (0.25 - 0.425))  # percent
    expected_p = wilcoxon_p(np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.5, 0.8, 0.9, 0.1]))
    assert pairs.loc["insertion", "wilcoxon_p"] == pytest.approx(expected_p)


def test_ranking_orders_methods_best_first_with_mean_per_image_ranks():
    table = long_table(
        {"a": [0.5, 0.5, 0.5], "b": [0.9, 0.7, 0.2], "c": [0.1, 0.2, 0.3]}, metric="deletion"
    )
    ranked = rankings(table, ["deletion"])  # lower deletion is better
    assert ranked["method"].tolist() == ["c", "a", "b"]
    assert ranked["rank"].tolist() == [1, 2, 3]
    # per image ranks: image0 c1 a2 b3; image1 c1 a2 b3; image2 b1 c2 a3
    assert ranked["mean_rank"].tolist() == pytest.approx([4 / 3, 7 / 3, 7 / 3])
    assert np.isnan(ranked["p_next"].iloc[-1])


def test_a_method_without_any_finite_value_is_ranked_last_without_a_rank():
    nan = float("nan")
    table = long_table({"a": [0.5, 0.6], "b": [nan, nan], "c": [0.7, 0.9]})
    ranked = rankings(table, ["insertion"])
    assert ranked["method"].tolist() == ["c", "a", "b"]
    assert ranked["rank"].iloc[:2].tolist() == [1, 2] and ranked["rank"].isna().iloc[2]
    assert np.isnan(ranked["mean"].iloc[2])


def test_different_images_or_protocol_settings_are_refused_naming_the_files():
    table = long_table({"a": [0.1, 0.2, 0.3], "b": [0.3, 0.2, 0.1]})
    table["source"] = np.where(table["method"] == "a", "runs/a-polycam.csv", "runs/b-polycam.csv")
    table["protocol_settings"] = "{}"
    shifted = table.copy()
    shifted.loc[shifted["method"] == "b", "image_id"] = ["img1.png", "img2.png", "img9.png"]
    with pytest.raises(ResultsError, match=r"runs/a-polycam.csv.*runs/b-polycam.csv.*img0.png"):
        paired_comparisons(shifted, ["insertion"])
    other = table.copy()
    other.loc[other["method"] == "b", "protocol_settings"] = '{"step": 16}'
    with pytest.raises(ResultsError, match="not its settings"):
        rankings(other, ["insertion"])


def test_an_evaluation_given_twice_is_refused_naming_its_file():
    table = long_table({"a": [0.1, 0.2, 0.3], "b": [0.3, 0.2, 0.1]})
    table["source"] = np.where(table["method"] == "a", "runs/a-polycam.csv", "runs/b-polycam.csv")
    twice = pd.concat([table, table[table["method"] == "b"]], ignore_index=True)
    with pytest.raises(ResultsError, match=r"runs/b-polycam.csv.*'img0.png' more than once"):
        rankings(twice, ["insertion"])
