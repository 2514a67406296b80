"""The recorded preprocessing rebuilt from a store's record, and images shown as the model saw them."""

import json

import pytest
import torch
from PIL import Image

from xaibench.core.errors import ConfigError
from xaibench.data.preprocess import (
    POLYCAM_PREPROCESSING,
    Preprocess,
    centre_crop,
    preprocessing_of,
)


def test_a_recorded_preprocessing_is_rebuilt_equal():
    for preprocess in (POLYCAM_PREPROCESSING.for_model(), Preprocess("rise", 256, 224)):
        recorded = json.loads(json.dumps(preprocess.to_dict()))  # as a store reads it back
        assert Preprocess.from_dict(recorded) == preprocess
    recorded = {"resize": [8, 8], "mean": [0.0] * 3, "std": [1.0] * 3}  # written before `name`
    assert Preprocess.from_dict(recorded) == Preprocess(
        resize=(8, 8), mean=(0.0,) * 3, std=(1.0,) * 3
    )


def test_a_preprocessing_resizes_to_the_model_input_and_uses_its_normalisation():
    pre = POLYCAM_PREPROCESSING.for_model((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (64, 48))
    assert pre == Preprocess("polycam", (64, 48), None, (0.5,) * 3, (0.25,) * 3)
    assert pre(Image.new("RGB", (100, 30), (255, 0, 128))).shape == (3, 64, 48)
    assert POLYCAM_PREPROCESSING.for_model() == Preprocess()


def test_unnormalise_undoes_the_normalisation_into_height_width_channels():
    preprocess = Preprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    pixels = torch.rand(3, 4, 5)
    normalised = (pixels - torch.tensor(preprocess.mean)[:, None, None]) / torch.tensor(
        preprocess.std
    )[:, None, None]
    shown = preprocess.unnormalise(normalised)
    assert shown.shape == (4, 5, 3)
    torch.testing.assert_close(shown, pixels.permute(1, 2, 0))


def test_a_models_own_preprocessing_is_recorded_with_its_interpolation_and_crop():
    own = centre_crop(224, 0.875, "bicubic", (0.5,) * 3, (0.5,) * 3)
    assert own == Preprocess("model", 256, 224, (0.5,) * 3, (0.5,) * 3, "bicubic")
    assert centre_crop(160, 0.95).resize == 168  # floor(160 / 0.95), as timm computes it
    recorded = json.loads(json.dumps(own.to_dict()))
    assert recorded["interpolation"] == "bicubic" and Preprocess.from_dict(recorded) == own
    assert preprocessing_of(recorded) == "model"
    plain = POLYCAM_PREPROCESSING.for_model().to_dict()
    assert "interpolation" not in plain and preprocessing_of(plain) == "protocol"
    squash = Preprocess("model", (256, 320), (224, 288), interpolation="bicubic")
    assert squash.input_size == (224, 288)
    assert Preprocess.from_dict(json.loads(json.dumps(squash.to_dict()))) == squash
    assert squash(Image.new("RGB", (100, 30))).shape == (3, 224, 288)


def test_a_centre_crop_needs_a_fraction_and_a_square_input_and_a_known_interpolation():
    with pytest.raises(ConfigError, match=r"^crop: 1.5 is not a fraction"):
        centre_crop(224, 1.5)
    with pytest.raises(ConfigError, match=r"^input_size: .*square"):
        centre_crop((224, 256), 0.9)
    with pytest.raises(ConfigError, match="interpolation 'cubic'"):
        Preprocess(interpolation="cubic")
