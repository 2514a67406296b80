"""Sanity-check tables (results/sanity.py): the per-stage summary."""

import numpy as np
import pandas as pd
import pytest

from xaibench.results.sanity import SANITY_COLUMNS


def test_stage_summary_is_the_t_interval_of_each_stage_and_statistic():
    from scipy import stats

    from xaibench.results.sanity import SANITY_STATISTICS, stage_summary

    rng = np.random.default_rng(3)
    stages = [(0, ""), (1, "8"), (2, "3"), (3, "1")]
    rows = [
        (f"img{i}", stage, layer, *rng.normal(size=3))
        for stage, layer in stages
        for i in range(1 if stage == 3 else 5)
    ]
    table = pd.DataFrame(rows, columns=list(SANITY_COLUMNS))
    table.loc[[1, 2], "ssim"] = np.nan
    table.loc[table["stage"] == 2, "spearman"] = np.nan
    summary = stage_summary(table, confidence=0.9)
    assert [tuple(r) for r in summary[["stage", "layer", "statistic"]].itertuples(index=False)] == [
        (stage, layer, name) for stage, layer in stages for name in SANITY_STATISTICS
    ]
    for row in summary.itertuples(index=False):
        values = table.loc[table["stage"] == row.stage, row.statistic].dropna().to_numpy()
        if len(values) == 0:
            assert np.isnan([row.mean, row.ci_low, row.ci_high]).all()
            continue
        assert row.mean == pytest.approx(values.mean(), rel=1e-12)
        if len(values) == 1:
            assert np.isnan(row.ci_low) and np.isnan(row.ci_high)
            continue
        low, high = stats.t.interval(0.9, len(values) - 1, values.mean(), stats.sem(values))
        assert (row.ci_low, row.ci_high) == pytest.approx((low, high), rel=1e-12)
