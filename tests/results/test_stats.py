import math

import pandas as pd
import pytest

from xaibench.results.stats import summarise, summary_markdown, summary_wide

T_975_4 = 2.7764451051977987  # Student's t, 97.5% quantile, 4 degrees of freedom


def test_mean_and_t_interval_of_a_known_sample():
    frame = pd.DataFrame({"deletion": [1.0, 2.0, 3.0, 4.0, 5.0, math.nan]})
    row = summarise(frame, ["deletion"]).iloc[0]
    half = T_975_4 * math.sqrt(2.5) / math.sqrt(5)
    assert (row["metric"], row["count"], row["missing"]) == ("deletion", 5, 1)
    assert row["mean"] == pytest.approx(3.0)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(3 - half), pytest.approx(3 + half))


def test_percent_metrics_are_reported_times_100_and_groups_stay_apart():
    frame = pd.DataFrame(
        {
            "method": ["b", "b", "a", "a"],
            "avg_drop": [0.1, 0.3, 0.5, 0.5],
            "increase": [0.0, 1.0, 1.0, 1.0],
            "insertion": [0.2, 0.4, 0.6, 0.6],
        }
    )
    table = summarise(frame, ["avg_drop", "increase", "insertion"], by=["method"])
    assert table["method"].tolist() == ["a"] * 3 + ["b"] * 3
    means = table.set_index(["method", "metric"])["mean"]
    assert means[("b", "avg_drop")] == pytest.approx(20.0)
    assert means[("b", "increase")] == pytest.approx(50.0)
    assert means[("b", "insertion")] == pytest.approx(0.3)
    a_drop = table[(table["method"] == "a") & (table["metric"] == "avg_drop")].iloc[0]
    assert a_drop["ci_low"] == pytest.approx(50.0) and a_drop["ci_high"] == pytest.approx(50.0)
    assert summarise(frame, ["avg_drop"], scales={})["mean"].iloc[0] == pytest.approx(0.35)


def test_a_single_value_has_no_interval():
    row = summarise(pd.DataFrame({"deletion": [0.4]}), ["deletion"]).iloc[0]
    assert row["count"] == 1 and row["mean"] == pytest.approx(0.4)
    assert math.isnan(row["ci_low"]) and math.isnan(row["ci_high"])


def test_markdown_table_without_tabulate():
    frame = pd.DataFrame({"method": ["grad|cam", "noise"], "deletion": [0.25, math.nan]})
    text = summary_markdown(summarise(frame, ["deletion"], by=["method"]))
    lines = text.splitlines()
    assert lines[0] == (
        "| method | metric | count | missing | mean | ci_low | ci_high | boot_low | boot_high |"
    )
    assert lines[1] == "|:---|:---|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| grad\\|cam | deletion | 1 | 0 | 0.2500 | NA | NA | NA | NA |"
    assert lines[3] == "| noise | deletion | 0 | 1 | NA | NA | NA | NA | NA |"


def test_summary_wide_has_one_row_per_method_and_a_cell_per_metric():
    per_image = pd.DataFrame(
        {
            "method": ["a", "a", "b", "b"],
            "insertion": [0.2, 0.4, 0.6, 0.8],
            "deletion": [0.1, 0.1, 0.3, 0.5],
        }
    )
    wide = summary_wide(
        summarise(per_image, ["insertion", "deletion"], by=["method"]), interval="t"
    )
    assert list(wide.columns) == ["method", "insertion", "deletion"]
    assert wide["method"].tolist() == ["a", "b"]
    assert wide.loc[0, "deletion"] == "0.100 [0.100, 0.100]"
    # mean 0.7, sd 0.1414, t(0.975, 1) = 12.706: half-width 1.2706
    assert wide.loc[1, "insertion"] == "0.700 [-0.571, 1.971]"
