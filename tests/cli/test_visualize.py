"""`xaibench visualize` and `xaibench activations` end to end through click's CliRunner."""

import pytest
import torch
from PIL import Image

from xaibench.core.errors import ConfigError, DataError
from xaibench.visualize.grid import FIGURE_DPI, LABEL_HEIGHT, activation_figure


def test_visualize_writes_one_png_per_unit_and_a_grid(tmp_path, invoke):
    out = tmp_path / "viz"
    result = invoke(
        "visualize",
        "--model",
        "tiny_models:tiny_cnn",
        "--unit",
        "3:5",
        "--unit",
        "8:7",
        "--steps",
        6,
        "--size",
        48,
        "--param",
        "pixel",
        "--out",
        out,
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "3:5: activation" in result.output
    assert "8:7: activation" in result.output and "p(class 7) = " in result.output
    for name in ("3_5.png", "8_7.png"):
        assert Image.open(out / name).size == (48, 48)
    assert Image.open(out / "grid.png").size == (2 * 50 + 2, 48 + LABEL_HEIGHT + 4)
    assert not list(out.glob(".*"))  # no temporary files left


def test_visualize_refuses_a_bad_unit_with_close_names(tmp_path, invoke):
    with pytest.raises(ConfigError, match="must be LAYER:CHANNEL"):
        invoke("visualize", "--model", "tiny_models:tiny_cnn", "--unit", "3", "--out", tmp_path)


def test_activations_writes_one_grid_per_layer(image_folder, tmp_path, invoke):
    image = next(image_folder.rglob("img0.png"))
    out = tmp_path / "maps"
    result = invoke(
        "activations",
        image,
        "--model",
        "tiny_models:tiny_cnn",
        "--layer",
        "0",
        "--layer",
        "3",
        "--channels",
        4,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "0: (8, 56, 56)" in result.output and "3: (16, 28, 28)" in result.output
    # 4 channels: a 2 x 2 grid of tiles of one size whatever the map's, plus the colour bar
    expected = activation_figure(torch.zeros(8, 5, 5), torch.arange(4)).get_size_inches()
    for layer in ("0", "3"):
        with Image.open(out / f"{layer}.png") as grid:
            assert grid.size == tuple(round(inches * FIGURE_DPI) for inches in expected)


def test_activations_of_a_file_that_is_not_an_image_is_one_clear_error(tmp_path, invoke):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(DataError, match=r"cannot decode image .*notes\.jpg.*JPEG or PNG"):
        invoke(
            "activations",
            text,
            "--model",
            "tiny_models:tiny_cnn",
            "--layer",
            "0",
            "--out",
            tmp_path,
        )
