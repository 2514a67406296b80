"""Occlusion: equal to Captum's `Occlusion` called directly, an analytic case, batch invariance,
the passes it declares, its settings through --param and a dry run, and its refusals."""

import re

import numpy as np
import pytest
import torch
from captum.attr import Occlusion as CaptumOcclusion
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods import METHODS, Occlusion, Passes
from xaibench.methods.cost import method_passes
from xaibench.methods.occlusion import window_starts
from xaibench.methods.settings import method_params
from xaibench.methods.support import support_by_name

SETTINGS = [  # (window, stride): square and not, tiling evenly or with a cut-off last window
    (8, 4),
    (6, 6),
    ([7, 10], [3, 5]),
    ([9, 6], 4),
    ([37, 5], [1, 5]),  # the window spans the image's height: one row of positions
    (1, 1),
]
SIZE = (37, 45)


def pairs(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def captum_maps(model, images, targets, window, stride, baseline, per_eval=5):
    """Captum's Occlusion of the explained score, the softmax probability, with a window over all
    3 channels: (B, 3, H, W)."""
    occlusion = CaptumOcclusion(lambda x: model(x).softmax(dim=1))
    return occlusion.attribute(
        images,
        sliding_window_shapes=(3, *pairs(window)),
        strides=(3, *pairs(stride)),
        baselines=baseline,
        target=targets,
        perturbations_per_eval=per_eval,
    )


@pytest.fixture
def batch():
    return torch.randn(3, 3, *SIZE, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("window", "stride"), SETTINGS, ids=str)
def test_equals_captum_called_directly(window, stride, tiny_resnet, batch):
    """In float64 the forwards agree to rounding; both return float32 maps (Captum casts its sums
    to float32 before dividing them by the counts)."""
    model, images = tiny_resnet.double(), batch.double()
    targets = torch.tensor([0, 3, 1])
    ours = Occlusion(model, window=window, stride=stride, baseline=0.3, window_batch=7)
    result = ours(images, targets)
    theirs = captum_maps(model, images, targets, window, stride, 0.3)
    assert theirs.shape == (3, 3, *SIZE) and torch.equal(theirs, theirs[:, :1].expand_as(theirs))
    assert result.maps.shape == (3, *SIZE) and result.maps.dtype == torch.float32
    scale = theirs.abs().max()
    assert theirs.dtype == torch.float32
    torch.testing.assert_close(result.maps, theirs[:, 0], rtol=1e-6, atol=1e-6 * scale)


def test_equals_captum_in_float32_with_the_top1_classes(small_vgg, batch):
    result = Occlusion(small_vgg, window=[10, 8], stride=[4, 8])(batch)
    theirs = captum_maps(small_vgg, batch, result.targets, [10, 8], [4, 8], 0.0, per_eval=12)
    scale = theirs.abs().max()
    torch.testing.assert_close(result.maps, theirs[:, 0], rtol=1e-4, atol=1e-4 * scale)


class OnePixel(nn.Module):
    """Two classes whose softmax probabilities are s and 1 - s, s = 0.5 + k * x[:, 1, y0, x0]:
    the logits are log s and log(1 - s), so occluding the pixel (y0, x0) moves p_0 by
    k * (value - baseline), and occluding any other pixel leaves it."""

    def __init__(self, pixel, k=0.1):
        super().__init__()
        self.pixel, self.k = pixel, k

    def forward(self, x):
        s = 0.5 + self.k * x[:, 1, self.pixel[0], self.pixel[1]]
        return torch.stack([s.log(), (1 - s).log()], dim=1)


def starts(side, window, stride):
    """First pixels of the windows along an axis, written as a loop: step on until a window
    reaches the last pixel."""
    first = [0]
    while first[-1] + window < side:
        first.append(first[-1] + stride)
    return first


def covering(starts_, window, pixel):
    return [s for s in starts_ if s <= pixel < s + window]


@pytest.mark.parametrize(("window", "stride"), [(5, 5), ([4, 6], [2, 3]), ([7, 5], [3, 4])])
def test_a_one_pixel_model_has_the_closed_form_map(window, stride):
    """drop = k (v - b) for the windows holding the pixel, 0 for the others; a pixel's map is
    k (v - b) x (its windows that hold the pixel) / (its windows), each count a product of a
    row count and a column count."""
    (h, w), (sh, sw), size, pixel = pairs(window), pairs(stride), (20, 23), (13, 21)
    images = torch.rand(
        2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    images = images - 0.5
    model, baseline = OnePixel(pixel), -0.2
    result = Occlusion(model, window=window, stride=stride, baseline=baseline)(
        images, torch.tensor([0, 1])
    )
    rows, cols = starts(size[0], h, sh), starts(size[1], w, sw)
    assert [window_starts(size[0], h, sh), window_starts(size[1], w, sw)] == [rows, cols]
    expected = np.zeros((2, *size))
    for y in range(size[0]):
        for x in range(size[1]):
            row_windows, col_windows = covering(rows, h, y), covering(cols, w, x)
            both = sum(pixel[0] in range(r, r + h) for r in row_windows) * sum(
                pixel[1] in range(c, c + w) for c in col_windows
            )
            expected[:, y, x] = both / (len(row_windows) * len(col_windows))
    drop = 0.1 * (images[:, 1, pixel[0], pixel[1]] - baseline)
    expected *= (np.array([1, -1]) * drop.numpy())[:, None, None]  # targets 0, 1: p_1 = 1 - p_0
    np.testing.assert_allclose(result.maps.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert result.extras["drops"].shape == (2, len(rows), len(cols))


def test_stride_equal_to_the_window_tiles_the_image():
    """Non-overlapping windows: the window holding the pixel carries the whole drop, the others 0."""
    images = torch.full((1, 3, 12, 12), 0.4, dtype=torch.float64)
    result = Occlusion(OnePixel((5, 9)), window=4, stride=4)(images, torch.tensor([0]))
    expected = torch.zeros(12, 12, dtype=torch.float64)
    expected[4:8, 8:12] = 0.1 * 0.4
    torch.testing.assert_close(result.maps[0].double(), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("window_batch", [1, 4, 13, None])
def test_an_images_map_depends_neither_on_its_batch_nor_on_the_chunk(
    window_batch, tiny_resnet, batch
):
    reference = Occlusion(tiny_resnet, window=[12, 9], stride=[5, 4], window_batch=1000)(batch)
    method = Occlusion(tiny_resnet, window=[12, 9], stride=[5, 4], window_batch=window_batch)
    together = method(batch)
    torch.testing.assert_close(together.maps, reference.maps, rtol=1e-5, atol=1e-7)
    for i in range(len(batch)):
        alone = method(batch[i : i + 1], together.targets[i : i + 1])
        torch.testing.assert_close(alone.maps[0], reference.maps[i], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(alone.extras["drops"][0], reference.extras["drops"][i])


def test_channels_last_images_give_the_same_maps(tiny_resnet, batch):
    method = Occlusion(tiny_resnet, window=8, stride=8)
    plain = method(batch)
    channels_last = method(batch.contiguous(memory_format=torch.channels_last), plain.targets)
    torch.testing.assert_close(channels_last.maps, plain.maps, rtol=1e-5, atol=1e-7)


def test_passes_count_the_window_positions():
    occlusion = METHODS.get("occlusion")
    assert occlusion.passes({}, input_size=(224, 224)) == Passes(1 + 27 * 27, 0)
    assert occlusion.passes({"window": 32, "stride": 16}, None, (224, 224)) == Passes(170, 0)
    # rows ceil((37 - 7) / 3) + 1 = 11, columns ceil((45 - 10) / 5) + 1 = 8
    assert occlusion.passes({"window": [7, 10], "stride": [3, 5]}, None, SIZE) == Passes(89, 0)
    assert occlusion.passes({"window": [37, 5], "stride": [1, 5]}, None, SIZE) == Passes(10, 0)
    assert method_passes("occlusion", {"window": 32, "stride": 32}, "resnet50") == Passes(50, 0)
    assert method_passes("occlusion", {}, "inception_v3") == Passes(1 + 37 * 37, 0)
    with pytest.raises(ConfigError, match="give input_size"):
        occlusion.passes({})
    with pytest.raises(ConfigError, match="give input_size"):  # not registered: size unknown
        method_passes("occlusion", {}, "tiny_models:tiny_cnn")
    with pytest.raises(ConfigError, match="larger than the 224x224 image"):
        occlusion.passes({"window": 256, "stride": 8}, None, (224, 224))


def test_supported_on_every_model():
    for name in ("resnet18", "vit_b_16", "mobilenet_v2"):
        assert support_by_name(name).method("occlusion").status == "yes"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"window": 0}, "window .*must be a positive integer"),
        ({"window": [4]}, r"window must be an int or a pair \[h, w\], got \[4\]"),
        ({"window": [4, 0]}, "window must be a positive integer, got 0"),
        ({"window": 2.5}, "window"),
        ({"window": True}, "window"),
        ({"window": "large"}, "window"),
        ({"stride": 0}, "stride .*must be a positive integer"),
        ({"stride": -2}, "stride"),
        ({"stride": [4, 17]}, "stride 17 is larger than the window's width 16"),
        ({"window": 4, "stride": 5}, "stride 5 is larger than the window's height 4"),
        ({"baseline": "grey"}, "baseline must be a finite number"),
        ({"baseline": float("nan")}, "baseline must be a finite number"),
        ({"baseline": True}, "baseline must be a finite number"),
        ({"window_batch": 0}, "window_batch must be a positive integer"),
    ],
    ids=str,
)
def test_bad_settings_are_refused_with_the_setting_named(settings, message, tiny_resnet):
    with pytest.raises(ConfigError, match=f"occlusion: {message}"):
        Occlusion(tiny_resnet, **settings)
    with pytest.raises(ConfigError, match=f"occlusion: {message}"):
        Occlusion.passes(settings, None, (64, 64))


def test_an_unknown_setting_is_refused_with_the_settings_listed(tiny_resnet):
    message = "occlusion has no setting 'shape' (its settings: window, stride, baseline, "
    with pytest.raises(ConfigError, match=re.escape(message)):
        Occlusion.passes({"shape": 4}, None, (64, 64))
    with pytest.raises(TypeError, match="shape"):
        Occlusion(tiny_resnet, shape=4)


def test_a_window_larger_than_the_image_is_refused_at_the_call(tiny_resnet, batch):
    method = Occlusion(tiny_resnet, window=[38, 8], stride=4)
    with pytest.raises(ConfigError, match=re.escape("window 38x8 is larger than the 37x45 image")):
        method(batch)


def test_settings_from_param_flags_reach_the_method(tiny_resnet):
    chosen = method_params(
        ["occlusion", "rise"], ("occlusion.window=[12,8]", "stride=4", "occlusion.baseline=-1.5")
    )
    assert chosen == {"occlusion": {"window": [12, 8], "stride": 4, "baseline": -1.5}}
    method = METHODS.get("occlusion")(tiny_resnet, **chosen["occlusion"])
    assert (method.window, method.stride, method.baseline) == ((12, 8), (4, 4), -1.5)
    assert method.params == {"window": [12, 8], "stride": 4, "baseline": -1.5, "window_batch": None}


def test_generate_writes_a_store_at_input_resolution(invoke, image_folder, tmp_path):
    from xaibench.store import open_store

    result = invoke(
        "generate", "--model", "tiny_models:tiny_cnn", "--saliency", "occlusion", "--data",
        image_folder, "--out", tmp_path, "--batch-size", 4, "--quiet",
        "--param", "window=[64,48]", "--param", "stride=[32,48]",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "tiny_models_tiny_cnn" / "occlusion.h5") as store:
        assert store.complete and len(store) == 6
        assert store.meta.method_params == {
            "window": [64, 48], "stride": [32, 48], "baseline": 0.0, "window_batch": None
        }  # fmt: skip
        maps = store.read_maps(np.arange(6))
        assert maps.shape == (6, 224, 224) and np.isfinite(maps).all()


def test_a_dry_run_counts_the_window_positions(invoke, image_folder, tmp_path):
    config = tmp_path / "occlusion.toml"
    config.write_text(
        f"""
[run]
name = "occlusion"
device = "cpu"

[data]
dataset = "folder"
root = "{image_folder}"

[[models]]
name = "resnet18"
weights = "none"

[generate]
methods = ["occlusion"]

[generate.params.occlusion]
window = 32
stride = 16
""",
        "utf-8",
    )
    plan = invoke("run", config, "--out", tmp_path / "run", "--dry-run").output
    assert "6 images x (170 forwards) = 1,020 forwards" in plan
