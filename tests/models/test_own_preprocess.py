"""A model's own preprocessing (`preprocessing` "model") gives, bit for bit, the input of
torchvision's `weights.transforms()` and of timm's `create_transform` on real photographs, and the
protocols' preprocessing is recorded as it always was."""

import pytest
import torch
import torchvision
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.models import get_pretrained_cfg

from xaibench.core.errors import ConfigError
from xaibench.data.samples import SAMPLES, build_sample_dataset
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.models.factory import model_spec


@pytest.fixture(scope="module")
def photographs(tmp_path_factory):
    """scikit-image's photographs of the sample dataset, as RGB: sizes 300 x 451 to 640 x 427,
    one of them grayscale."""
    root = build_sample_dataset(tmp_path_factory.mktemp("samples"))
    return [Image.open(root / wnid / name).convert("RGB") for name, wnid, _ in SAMPLES]


@pytest.mark.parametrize(
    ("architecture", "weights"),
    [
        ("resnet50", "IMAGENET1K_V1"),  # resize 256, bilinear
        ("resnet50", "IMAGENET1K_V2"),  # resize 232
        ("inception_v3", "IMAGENET1K_V1"),  # 342 -> 299
        ("efficientnet_b3", "IMAGENET1K_V1"),  # 320 -> 300, bicubic
        ("vit_b_16", "IMAGENET1K_SWAG_LINEAR_V1"),  # 224, bicubic
    ],
)
def test_torchvision_weights_own_preprocessing_is_their_transforms(
    photographs, architecture, weights
):
    own = model_spec(architecture).own_preprocess(weights)
    reference = torchvision.models.get_model_weights(architecture)[weights].transforms()
    assert own.name == "model" and own.interpolation == reference.interpolation.value
    for image in photographs:
        assert torch.equal(own(image), reference(image))


@pytest.mark.parametrize(
    "name",
    [
        "resnet10t.c3_in1k",  # center crop 0.875, bicubic
        "test_vit.r160_in1k",  # 0.95, mean and std 0.5
        "test_efficientnet.r160_in1k",
        "dm_nfnet_f0.dm_in1k",  # squash: each side to side / 0.9, then the crop
        "vit_base_patch16_sapiens2.fb",  # squash to 1024 x 768
    ],
)
def test_timm_own_preprocessing_is_its_create_transform(photographs, name):
    own = model_spec(f"timm/{name}").own_preprocess("default")  # built on the meta device
    config = resolve_data_config(pretrained_cfg=get_pretrained_cfg(name).to_dict())
    reference = create_transform(**config)
    assert own.input_size == tuple(config["input_size"][1:])
    for image in photographs:
        assert torch.equal(own(image), reference(image))


def test_timms_border_crop_is_refused_for_the_model_preprocessing():
    spec = model_spec("timm/deepseek_vit_412m_enc.deepseek_v4_flash_vision_exp")
    with pytest.raises(ConfigError, match=r"^preprocessing: .*'border' crop.* protocol"):
        spec.own_preprocess("default")


def test_the_protocols_preprocessing_is_recorded_as_before():
    loaded = load_model("timm/resnet10t", "none")
    protocol = get_protocol("polycam")
    chosen = protocol.preprocess_for(loaded)
    assert chosen == protocol.preprocess(loaded.mean, loaded.std, loaded.input_size)
    assert chosen.to_dict() == {
        "name": "polycam", "resize": [176, 176], "crop": None, "input_size": [176, 176],
        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    }  # fmt: skip
    assert protocol.preprocess_for(loaded, "model") == loaded.own_preprocess()
    with pytest.raises(ConfigError, match=r"^preprocessing: 'own': use one of protocol, model"):
        protocol.preprocess_for(loaded, "own")


def test_a_user_model_states_its_mean_std_input_size_and_crop(tmp_path, monkeypatch):
    (tmp_path / "my_net.py").write_text(
        "import torch\n"
        "def build():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1),\n"
        "        torch.nn.Flatten(), torch.nn.Linear(4, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plain = load_model("my_net:build")
    assert (plain.mean, plain.input_size) == ((0.485, 0.456, 0.406), (224, 224))
    with pytest.raises(ConfigError, match=r"^preprocessing: my_net:build states no .* `crop`"):
        plain.own_preprocess()
    stated = load_model("my_net:build", mean=(0.5,) * 3, std=(0.2,) * 3, input_size=96, crop=0.8)
    assert (stated.mean, stated.std, stated.input_size) == ((0.5,) * 3, (0.2,) * 3, (96, 96))
    own = stated.own_preprocess()
    assert (own.resize, own.crop, own.mean, own.interpolation) == (120, 96, (0.5,) * 3, "bilinear")
    assert get_protocol("rise").preprocess_for(stated).resize == (96, 96)
    with pytest.raises(ConfigError, match=r"^std: \[1.0, 0.0, 1.0\]: give 3 numbers.*> 0"):
        load_model("my_net:build", std=(1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match=r"^input_size: .*square"):
        load_model("my_net:build", input_size=(96, 128), crop=0.9)
    with pytest.raises(ConfigError, match=r"^mean: resnet18 states its own mean"):
        load_model("resnet18", "none", mean=(0.5,) * 3)
