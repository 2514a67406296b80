"""The report's figures draw what they say: mean curves, sanity means per stage, overlays."""

import numpy as np
import pandas as pd
import pytest
from matplotlib import colormaps

from xaibench.report.plots import (
    curve_positions,
    mean_curves_figure,
    overlay,
    sanity_figure,
)


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
