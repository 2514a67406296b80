"""The bootstrap interval of `summarise`: coverage, reproducibility, missing values, vectorisation."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xaibench.core.errors import ConfigError
from xaibench.results.stats import bootstrap_intervals, summarise, summary_wide


def test_bootstrap_interval_covers_the_true_mean_at_about_the_nominal_rate():
    # 200 seeded samples of 40 skewed values (exponential, true mean 2): one vectorised call.
    samples, n, true_mean = 200, 40, 2.0
    values = np.random.default_rng(1).exponential(true_mean, size=(n, samples))
    bounds = bootstrap_intervals(values, resamples=2000, seed=0)
    covered = (bounds[:, 0] <= true_mean) & (true_mean <= bounds[:, 1])
    # 95% nominal; the percentile interval of a small skewed sample is known to run a little low.
    # Three binomial standard deviations of a 200-sample proportion: +-0.046.
    tolerance = 3 * np.sqrt(0.95 * 0.05 / samples)
    assert abs(covered.mean() - 0.95) <= tolerance, covered.mean()
    assert (bounds[:, 0] < values.mean(axis=0)).all() and (values.mean(axis=0) < bounds[:, 1]).all()


def test_columns_resampled_together_equal_each_column_alone():
    values = np.random.default_rng(2).normal(size=(30, 3))
    together = bootstrap_intervals(values, resamples=500, seed=7)
    for column in range(3):
        alone = bootstrap_intervals(values[:, [column]], resamples=500, seed=7)
        np.testing.assert_allclose(together[column], alone[0])


def test_bootstrap_is_seeded_matches_scipy_and_skips_missing_values():
    values = np.random.default_rng(3).normal(size=(25, 2))
    values[[0, 4], 1] = np.nan
    first = bootstrap_intervals(values, resamples=800, seed=5)
    np.testing.assert_array_equal(first, bootstrap_intervals(values, resamples=800, seed=5))
    column = values[:, 1][np.isfinite(values[:, 1])]
    reference = stats.bootstrap(
        (column,),
        np.mean,
        n_resamples=800,
        method="percentile",
        random_state=np.random.default_rng(5),
    ).confidence_interval
    np.testing.assert_allclose(first[1], [reference.low, reference.high])


def test_summarise_carries_both_intervals_in_summary_units():
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {
            "method": ["a"] * 50 + ["b"] * 50,
            "avg_drop": rng.uniform(0, 1, 100),
            "insertion": rng.uniform(0, 1, 100),
        }
    )
    frame.loc[3, "insertion"] = np.nan
    table = summarise(frame, ["avg_drop", "insertion"], by=["method"], resamples=1000)
    for _, row in table.iterrows():
        assert row["boot_low"] < row["mean"] < row["boot_high"]
        assert row["ci_low"] < row["mean"] < row["ci_high"]
        # For 50 values the two intervals nearly agree.
        assert row["boot_high"] - row["boot_low"] == pytest.approx(
            row["ci_high"] - row["ci_low"], rel=0.2
        )
    drop_a = table[(table["method"] == "a") & (table["metric"] == "avg_drop")].iloc[0]
    assert drop_a["boot_low"] >= 0 and drop_a["boot_high"] <= 100 and drop_a["mean"] > 1
    only_a = frame[frame["method"] == "a"]
    alone = bootstrap_intervals(only_a[["insertion"]].to_numpy(), resamples=1000)
    insertion_a = table[(table["method"] == "a") & (table["metric"] == "insertion")].iloc[0]
    np.testing.assert_allclose([insertion_a["boot_low"], insertion_a["boot_high"]], alone[0])


def test_bootstrap_stays_inside_the_range_of_a_zero_one_metric():
    frame = pd.DataFrame({"increase": [0, 0, 0, 1, 0, 1.0]})
    row = summarise(frame, ["increase"], resamples=2000).iloc[0]
    assert row["ci_low"] < 0  # the t-interval leaves [0, 100] %
    assert 0 <= row["boot_low"] < row["mean"] < row["boot_high"] <= 100
    wide = summary_wide(summarise(frame.assign(method="m"), ["increase"], by=["method"]))
    assert wide.loc[0, "increase"].startswith("33.333 [")
    with pytest.raises(ConfigError, match=r"^interval: 'normal': use one of bootstrap, t$"):
        summary_wide(summarise(frame, ["increase"]), interval="normal")
