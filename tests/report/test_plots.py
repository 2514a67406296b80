"""The report's figures draw what they say: mean curves, sanity means per stage, overlays."""

import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps
from scipy import stats

from xaibench.pipelines.sanity import plot_sanity
from xaibench.report.plots import (
    curve_positions,
    mean_curves_figure,
    overlay,
)
from xaibench.results.sanity import SanityResult
from xaibench.results.sanity_figure import sanity_figure


def test_mean_curves_are_the_nanmean_over_images_on_the_protocols_x_axis():
    rng = np.random.default_rng(0)
    insertion = rng.uniform(size=(4, 5))
    insertion[1] = np.nan  # a flagged image
    deletion = rng.uniform(size=(4, 5))
    figure = mean_curves_figure({"tgrad": {"insertion": insertion, "deletion": deletion}}, True)
    ins_axes, del_axes = figure.axes
    np.testing.assert_allclose(ins_axes.lines[0].get_ydata(), np.nanmean(insertion, axis=0))
    np.testing.assert_allclose(del_axes.lines[0].get_ydata(), deletion.mean(axis=0))
    np.testing.assert_allclose(ins_axes.lines[0].get_xdata(), [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(curve_positions(4, include_start=False), [0.25, 0.5, 0.75, 1])


def test_sanity_plot_shows_the_mean_over_images_of_each_stage():
    frame = pd.DataFrame(
        {
            "image_id": ["a", "b", "a", "b"],
            "stage": [0, 0, 1, 1],
            "layer": ["", "", "fc", "fc"],
            "spearman": [1.0, 1.0, 0.2, 0.4],
            "spearman_abs": [1.0, 1.0, 0.3, 0.5],
            "ssim": [1.0, 1.0, 0.1, 0.3],
        }
    )
    figure = sanity_figure({"gradcam": frame})
    assert [a.get_title() for a in figure.axes][2] == "SSIM"
    np.testing.assert_allclose(figure.axes[0].lines[0].get_ydata(), [1.0, 0.3])
    np.testing.assert_allclose(figure.axes[1].lines[0].get_ydata(), [1.0, 0.4])
    np.testing.assert_allclose(figure.axes[2].lines[0].get_ydata(), [1.0, 0.2])
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["original", "fc"]


def nan_table() -> pd.DataFrame:
    """4 images; at the last stage 3 of them have an undefined Spearman, one is negative."""
    return pd.DataFrame(
        {
            "image_id": list("abcd") * 3,
            "stage": [0] * 4 + [1] * 4 + [2] * 4,
            "layer": [np.nan] * 4 + ["fc"] * 4 + ["conv"] * 4,  # stage 0 as read from a CSV
            "spearman": [1, 1, 1, 1, 0.5, -0.7, 0.1, np.nan, 0.22, np.nan, np.nan, np.nan],
            "spearman_abs": [1, 1, 1, 1, -0.4, -0.8, -0.6, -0.2, 0.3, -0.9, np.nan, 0.1],
            "ssim": [1, 1, 1, 1, 0.4, 0.2, 0.3, 0.1, 0.1, -0.2, 0.05, 0.0],
        }
    )


def test_sanity_plot_draws_the_verdicts_values_with_n_and_intervals_over_the_full_range():
    table = nan_table()
    figure = sanity_figure({"tgrad": table})
    spearman, spearman_abs, ssim = figure.axes
    line = spearman.lines[0]
    np.testing.assert_allclose(line.get_xdata(), [0, 1, 2])
    np.testing.assert_allclose(line.get_ydata(), [1.0, (0.5 - 0.7 + 0.1) / 4, 0.22 / 4])
    verdict = SanityResult("tgrad", table, stages=[]).final_spearman
    assert line.get_ydata()[-1] == verdict == pytest.approx(0.055)
    np.testing.assert_allclose(spearman_abs.lines[0].get_ydata(), [1.0, -0.5, -0.125])
    # n under each point: images whose similarity is defined
    assert [t.get_text() for t in spearman.texts] == ["4", "3", "1"]
    assert [t.get_text() for t in spearman_abs.texts] == ["4", "4", "3"]
    assert [t.xy for t in spearman.texts][2] == pytest.approx((2, 0.055))
    assert spearman.get_legend().get_texts()[0].get_text() == "tgrad (4 images)"
    # the 95% t-interval of each stage as a band around the mean
    band = spearman.collections[0].get_paths()[0].vertices
    for stage in (1, 2):
        values = table.loc[table["stage"] == stage, "spearman"].fillna(0).to_numpy()
        half = stats.t.ppf(0.975, 3) * stats.sem(values)
        edges = band[band[:, 0] == stage, 1]
        assert (edges.min(), edges.max()) == pytest.approx(
            (values.mean() - half, values.mean() + half)
        )
    for axes in figure.axes:
        low, high = axes.get_ylim()
        assert low <= -1 and high >= 1  # negative means (|map| at stage 1: -0.5) stay in view
        assert axes.get_xlabel() and "mean over images" in axes.get_ylabel()
    assert [t.get_text() for t in ssim.get_xticklabels()] == ["original", "fc", "conv"]


def test_the_sanity_commands_plot_is_the_same_figure_with_the_threshold_and_verdict():
    result = SanityResult("tgrad", nan_table(), stages=[], threshold=0.3)
    figure = plot_sanity(result)
    spearman = figure.axes[0]
    assert spearman.lines[0].get_ydata()[-1] == result.final_spearman
    threshold = spearman.lines[1]
    np.testing.assert_allclose(threshold.get_ydata(), [0.3, 0.3])
    assert [a.get_ylim()[0] < -1 for a in figure.axes] == [True] * 3
    assert figure.get_suptitle() == "tgrad: passes (final mean Spearman 0.055, threshold 0.3)"
    flagged = SanityResult(
        "centre", nan_table().fillna({"spearman": 1.0}), stages=[], threshold=0.3
    )
    assert plot_sanity(flagged).get_suptitle().startswith("centre: FLAGGED")


def test_overlay_blends_the_scaled_map_and_leaves_a_constant_map_out():
    image = np.full((2, 2, 3), 0.5)
    saliency = np.array([[0.0, 1.0], [2.0, 4.0]])
    blended = overlay(image, saliency, alpha=0.5)
    top = np.array(colormaps["jet"](1.0)[:3])
    np.testing.assert_allclose(blended[1, 1], 0.25 + 0.5 * top)
    np.testing.assert_allclose(blended[0, 0], 0.25 + 0.5 * np.array(colormaps["jet"](0.0)[:3]))
    assert overlay(image, np.ones((2, 2))) is image
    assert overlay(image, np.full((2, 2), np.nan)) is image
    with pytest.raises(ValueError):
        overlay(image, np.ones((3, 3)))
