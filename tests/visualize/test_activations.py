"""Layer activation maps and figures: one forward for all layers, channel choice, no hooks left,
labelled tiles on one colour scale, figure size."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_cnn

from xaibench.core.errors import ConfigError
from xaibench.visualize import (
    activation_figure,
    choose_channels,
    labelled_grid,
    layer_activations,
    save_png,
)
from xaibench.visualize.grid import FIGURE_DPI, MAX_FIGURE_INCHES, TILE_INCHES


def no_module_hooks(model):
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.fixture
def images():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_activations_of_several_layers_from_one_forward(images):
    model = tiny_cnn()
    forwards = []
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    maps = layer_activations(model, images, ["0", "3", "4"])
    handle.remove()
    assert len(forwards) == 1
    assert no_module_hooks(model)
    assert maps["0"].shape == (2, 8, 16, 16) and maps["3"].shape == (2, 16, 8, 8)
    torch.testing.assert_close(maps["0"], model[0](images))
    # layer 3 is followed by ReLU(inplace=True): its map keeps the negative values
    assert (maps["3"] < 0).any() and (maps["4"] >= 0).all()
    torch.testing.assert_close(maps["4"], maps["3"].clamp(min=0))


def test_layers_that_are_not_feature_maps_or_do_not_exist_are_refused(images):
    model = tiny_cnn()
    with pytest.raises(ConfigError, match="not a feature map"):
        layer_activations(model, images, ["8"])
    with pytest.raises(ConfigError, match="no layer 'conv9'"):
        layer_activations(model, images, ["conv9"])
    assert no_module_hooks(model)


def test_channels_are_chosen_by_mean_activation_or_in_order():
    maps = torch.zeros(6, 4, 4)
    maps[4] += 3.0
    maps[1] += 2.0
    maps[5] += 1.0
    assert choose_channels(maps, 3, "top").tolist() == [4, 1, 5]
    assert choose_channels(maps, 3, "first").tolist() == [0, 1, 2]
    assert choose_channels(maps, 10).shape == (6,)
    with pytest.raises(ConfigError, match="channel order"):
        choose_channels(maps, 2, "largest")


def test_activation_figure_titles_each_tile_with_its_channel_on_one_colour_scale():
    maps = torch.arange(5 * 8 * 8, dtype=torch.float32).view(5, 8, 8) - 100
    maps[2] = 7.0  # constant
    figure = activation_figure(maps, torch.tensor([4, 2, 0]), title="conv1 (5, 8, 8)")
    tiles = [axes for axes in figure.axes if axes.images and axes.get_label() != "<colorbar>"]
    assert [axes.get_title() for axes in tiles] == ["ch 4", "ch 2", "ch 0"]
    assert [axes.get_xlabel() for axes in tiles] == ["156 to 219", "7 to 7", "-100 to -37"]
    assert len([a for a in figure.axes if a.get_label() == "<colorbar>"]) == 1
    colorbar = tiles[0].images[0].colorbar
    assert colorbar.ax.get_ylabel() == "activation"
    assert colorbar.mappable.get_clim() == (-100.0, 219.0)  # the tiles shown, all on one scale
    for axes, channel in zip(tiles, (4, 2, 0), strict=True):
        image = axes.images[0]
        assert image.get_clim() == (-100.0, 219.0)
        np.testing.assert_array_equal(image.get_array(), maps[channel].numpy())
        assert image.get_interpolation() == "nearest"
    # 3 channels: 2 x 2 grid, the fourth cell empty
    assert sum(not axes.axison for axes in figure.axes) == 1
    assert figure.get_suptitle() == "conv1 (5, 8, 8)"


def test_activation_figure_grows_with_the_channels_shown_up_to_the_cap():
    maps = torch.rand(144, 4, 4, generator=torch.Generator().manual_seed(0))
    sizes = []
    for n in (1, 2, 4, 9, 16, 36, 100, 144):
        figure = activation_figure(maps, torch.arange(n))
        tiles = [a for a in figure.axes if a.axison and a.get_label() != "<colorbar>"]
        assert len(tiles) == n
        sizes.append(tuple(figure.get_size_inches()))
    widths, heights = zip(*sizes, strict=True)
    # ceil(sqrt(n)) columns of full-size tiles while the figure fits: 1, 2, 2, 3, 4, 6 columns
    assert widths[:6] == pytest.approx([c * TILE_INCHES + 1.2 for c in (1, 2, 2, 3, 4, 6)])
    assert heights[:6] == pytest.approx([r * TILE_INCHES * 1.3 + 0.5 for r in (1, 1, 2, 3, 4, 6)])
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(heights))  # never shrinks
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(widths))
    assert max(widths + heights) == pytest.approx(MAX_FIGURE_INCHES)  # the tall grids stop there
    assert heights[-2:] == pytest.approx((MAX_FIGURE_INCHES, MAX_FIGURE_INCHES))
    assert widths[-1] < 12 * TILE_INCHES + 1.2  # 12 columns of smaller tiles


def test_an_activation_figure_is_written_as_a_png_of_its_size(tmp_path):
    figure = activation_figure(torch.rand(4, 6, 6), torch.arange(4))
    path = save_png(figure, tmp_path / "layer.png")
    with Image.open(path) as written:
        assert written.format == "PNG"
        assert written.size == tuple(round(v * FIGURE_DPI) for v in figure.get_size_inches())


def test_labelled_grid_refuses_mismatched_labels():
    with pytest.raises(ValueError, match="3 tiles but 2 labels"):
        labelled_grid(torch.rand(3, 3, 8, 8), ["a", "b"])
