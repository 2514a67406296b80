"""Layer activation maps and grids: one forward for all layers, sizes, channel choice, no hooks left."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_cnn

from xaibench.core.errors import ConfigError
from xaibench.visualize import activation_grid, choose_channels, labelled_grid, layer_activations
from xaibench.visualize.grid import LABEL_HEIGHT


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


def test_activation_grid_has_the_expected_size_and_shows_each_channel_scaled():
    maps = torch.arange(5 * 8 * 8, dtype=torch.float32).view(5, 8, 8)
    maps[2] = 7.0  # constant: shown black
    grid = activation_grid(maps, torch.tensor([0, 2, 3, 4]), min_side=48, columns=3)
    tile, padding = 48, 2  # 8 x 8 enlarged 6 times
    assert isinstance(grid, Image.Image)
    assert grid.size == (
        3 * (tile + padding) + padding,
        2 * (tile + LABEL_HEIGHT + padding) + padding,
    )
    pixels = torch.tensor(np.array(grid), dtype=torch.float32)
    first = pixels[padding : padding + tile, padding : padding + tile, 0]
    assert first.min() == 0 and first.max() == 255  # min-max scaled per channel
    second = pixels[padding : padding + tile, 2 * padding + tile : 2 * padding + 2 * tile, 0]
    assert second.max() == 0


def test_labelled_grid_refuses_mismatched_labels():
    with pytest.raises(ValueError, match="3 tiles but 2 labels"):
        labelled_grid(torch.rand(3, 3, 8, 8), ["a", "b"])
