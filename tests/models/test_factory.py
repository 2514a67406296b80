import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from xaibench.core.errors import ConfigError, ModelError, UnknownNameError
from xaibench.models import load_model
from xaibench.models.factory import returning_logits


def test_torchvision_model_with_random_weights():
    loaded = load_model("resnet18", "none")
    assert loaded.weights == "none"
    assert not loaded.model.training
    assert loaded.input_size == (224, 224)
    assert loaded.model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def same_state(first, second):
    one, two = first.state_dict(), second.state_dict()
    return one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_random_weights_are_the_same_network_every_time_and_leave_the_global_rng():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = load_model("resnet18", "none").model
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random state is untouched
    torch.manual_seed(7)  # another global state, as in another process
    assert same_state(first, load_model("resnet18", "none").model)
    assert not same_state(first, torchvision.models.resnet18(weights=None))


def test_input_size_comes_from_the_weights_metadata():
    assert load_model("inception_v3", "none").input_size == (299, 299)


def test_default_weights_go_through_the_torchvision_weights_api(tmp_path, monkeypatch):
    """The standard path users take: the weights enum, loaded from the torch hub cache."""
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    reference = torchvision.models.resnet18(weights=None)
    cache = tmp_path / "checkpoints"
    cache.mkdir()
    torch.save(reference.state_dict(), cache / Path(weights.url).name)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))

    loaded = load_model("resnet18", "default")

    assert loaded.weights == str(weights)
    assert loaded.mean == tuple(weights.transforms().mean)
    for name, value in reference.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value)


def test_failed_weights_download_is_a_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(ModelError, match=r"^weights: .* or `weights` none for random weights"):
        load_model("resnet18", "IMAGENET1K_V1")


def test_unknown_weights_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        load_model("resnet50", "IMAGENET9K")


def test_weights_file_is_loaded_and_recorded_by_hash(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "mine.pt"
    torch.save(reference.state_dict(), path)
    loaded = load_model("resnet18", str(path))
    assert loaded.weights.startswith("sha256:") and len(loaded.weights) == 7 + 64
    assert torch.equal(loaded.model.fc.weight, reference.fc.weight)


def test_missing_weights_file_names_the_path(tmp_path):
    missing = tmp_path / "nothing.pth"
    with pytest.raises(ModelError, match=r"nothing\.pth does not exist"):
        load_model("resnet18", str(missing))


def test_weights_file_for_another_model_is_refused(tmp_path):
    path = tmp_path / "vgg.pt"
    torch.save(torchvision.models.vgg11(weights=None).state_dict(), path)
    with pytest.raises(ModelError, match="does not fit"):
        load_model("resnet18", str(path))


def test_unknown_model_lists_close_names():
    with pytest.raises(UnknownNameError, match="vgg16"):
        load_model("vgg61")


def test_user_model_from_module_callable(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def tiny():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),\n"
        "        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 10))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("my_models:tiny", "default")
    assert loaded.model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)
    with pytest.raises(ConfigError, match="cannot import"):
        load_model("my_models:missing", "default")


def test_a_model_returning_a_mapping_is_made_to_return_its_logits(tmp_path, monkeypatch):
    (tmp_path / "mapping_models.py").write_text(
        "import torch\n"
        "class Head(torch.nn.Module):\n"
        "    def __init__(self, key):\n"
        "        super().__init__()\n"
        "        self.key, self.fc = key, torch.nn.Linear(12, 10)\n"
        "    def forward(self, x):\n"
        "        return {self.key: self.fc(x.flatten(1)[:, :12]), 'hidden': x}\n"
        "def with_logits():\n"
        "    return Head('logits')\n"
        "def without():\n"
        "    return Head('scores')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("mapping_models:with_logits", "default")
    images = torch.randn(2, 3, 4, 4)
    logits = loaded.model(images)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 10)
    torch.testing.assert_close(logits, loaded.model.fc(images.flatten(1)[:, :12]))
    assert type(loaded.model).__name__ == "Head" and list(loaded.model.state_dict()) == [
        "fc.weight",
        "fc.bias",
    ]
    again = returning_logits(loaded.model)
    assert again is loaded.model and type(again).__base__.__base__ is torch.nn.Module  # once
    with pytest.raises(
        ModelError, match=r"Head returned a mapping with keys \['hidden', 'scores'\]"
    ):
        load_model("mapping_models:without", "default").model(images)


def test_efficientnet_lite0_loads_its_packaged_weights_offline():
    loaded = load_model("efficientnet_lite0")
    assert loaded.weights == "efficientnet-lite0-57934424"
    assert loaded.mean == pytest.approx((127 / 255,) * 3)
