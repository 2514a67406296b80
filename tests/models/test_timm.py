"""timm models by name: built by `timm.create_model` with the input size, mean, std, interpolation and
crop of their pretrained config; weights none, a state dict, or timm's default weights read from the
local caches only (fake caches in a temporary folder here: nothing is downloaded)."""

import json
import sys

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file
from timm.data import resolve_model_data_config

from xaibench.core.errors import ConfigError, ModelError
from xaibench.methods.support import skeleton
from xaibench.models import load_model, timm_models
from xaibench.models.factory import list_model_names, model_input_size

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Empty Hugging Face hub and torch hub caches in `tmp_path`, and the hub offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch"))
    timm_models.timm_spec.cache_clear()
    yield
    timm_models.timm_spec.cache_clear()


def hub_snapshot(root, repo, files):
    """A Hugging Face hub cache entry of `repo` at `REVISION` holding `files` (name -> writer)."""
    entry = root / "hf" / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(REVISION)
    snapshot = entry / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    for name, write in files.items():
        write(snapshot / name)
    return snapshot


def same_weights(a, b):
    return all(torch.equal(value, b.state_dict()[key]) for key, value in a.state_dict().items())


@pytest.mark.parametrize("name", ["resnet10t", "test_vit", "test_efficientnet"])
def test_a_timm_model_states_its_pretrained_configs_preprocessing(name):
    loaded = load_model(f"timm/{name}", "none")
    config = resolve_model_data_config(loaded.model)
    cfg = loaded.model.pretrained_cfg
    assert loaded.weights == "none" and not loaded.model.training
    assert isinstance(loaded.model, type(timm.create_model(name)))
    assert loaded.input_size == tuple(cfg["input_size"][1:]) == tuple(config["input_size"][1:])
    assert model_input_size(loaded.model) == loaded.input_size
    assert (loaded.mean, loaded.std) == (tuple(cfg["mean"]), tuple(cfg["std"]))
    own = loaded.own_preprocess()
    side = loaded.input_size[0]
    assert own.name == "model" and own.crop == side and own.interpolation == cfg["interpolation"]
    assert own.resize == int(side / cfg["crop_pct"]) and (own.mean, own.std) == (
        loaded.mean,
        loaded.std,
    )
    assert loaded.model(torch.zeros(1, 3, *loaded.input_size)).shape == (1, 1000)


@pytest.mark.parametrize("name", ["timm/test_vit", "timm/test_efficientnet"])
def test_random_weights_are_the_same_network_in_every_process(name):
    torch.manual_seed(1)
    first = load_model(name, "none").model
    torch.manual_seed(2)  # another global random state, as another process has
    second = load_model(name, "none").model
    assert same_weights(first, second) and first.state_dict().keys() == second.state_dict().keys()


def test_the_values_differ_between_models_as_their_configs_do():
    resnet, vit = load_model("timm/resnet10t", "none"), load_model("timm/test_vit", "none")
    assert resnet.input_size == (176, 176) and vit.input_size == (160, 160)
    assert vit.mean == (0.5, 0.5, 0.5) and resnet.mean == (0.485, 0.456, 0.406)
    assert (
        resnet.own_preprocess().resize == 201 and vit.own_preprocess().resize == 168
    )  # 0.875, 0.95


def test_a_pretrained_tag_in_the_name_is_checked_against_timms():
    assert load_model("timm/resnet10t.c3_in1k", "none").input_size == (176, 176)
    with pytest.raises(ConfigError, match=r"^model: timm has no pretrained tag 'xyz' .*c3_in1k"):
        load_model("timm/resnet10t.xyz", "none")
    with pytest.raises(ConfigError, match=r"^model: unknown timm model 'resnt10t'.*timm/resnet10t"):
        load_model("timm/resnt10t", "none")
    with pytest.raises(ConfigError, match=r"^weights: .*tag of its name"):
        load_model("timm/resnet10t", "IMAGENET1K_V1")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_state_dict_file_is_loaded_and_recorded_by_hash(tmp_path, suffix):
    reference = timm.create_model("test_resnet")
    path = tmp_path / f"mine{suffix}"
    if suffix == ".pt":
        torch.save(reference.state_dict(), path)
    else:
        save_file(reference.state_dict(), path)
    loaded = load_model("timm/test_resnet", str(path))
    assert loaded.weights.startswith("sha256:") and len(loaded.weights) == 7 + 64
    assert same_weights(loaded.model, reference)
    assert loaded.own_preprocess().crop == 160  # the default tag's, for a file


def test_missing_default_weights_say_where_they_are_expected(tmp_path):
    with pytest.raises(ModelError) as caught:
        load_model("timm/resnet10t", "default")
    message = str(caught.value)
    assert message.startswith("weights: the default weights of timm/resnet10t are not in the local")
    hf = tmp_path / "hf" / "models--timm--resnet10t.c3_in1k" / "snapshots" / "REVISION"
    assert f"{hf}/model.safetensors" in message and "hf download timm/resnet10t.c3_in1k" in message
    assert str(tmp_path / "torch" / "checkpoints" / "resnet10t_176_c3-f3215ab1.pth") in message
    assert "Pass a state-dict file as `weights`" in message
    assert not (tmp_path / "hf").exists()  # nothing was fetched


def test_default_weights_come_from_the_hugging_face_hub_cache(tmp_path):
    reference = timm.create_model("test_resnet")
    hub_snapshot(
        tmp_path,
        "timm/test_resnet.r160_in1k",
        {"model.safetensors": lambda path: save_file(reference.state_dict(), path)},
    )
    loaded = load_model("timm/test_resnet", "default")
    assert loaded.weights == f"hf-hub:timm/test_resnet.r160_in1k@{REVISION}"
    assert same_weights(loaded.model, reference)


def test_default_weights_come_from_the_torch_hub_cache(tmp_path):
    reference = timm.create_model("resnet10t")
    checkpoints = tmp_path / "torch" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / "resnet10t_176_c3-f3215ab1.pth")
    loaded = load_model("timm/resnet10t", "default")
    assert loaded.weights == "timm:resnet10t_176_c3-f3215ab1.pth"
    assert same_weights(loaded.model, reference)


def test_a_hub_model_card_is_read_from_the_cache(tmp_path):
    reference = timm.create_model("test_resnet")
    config = {
        "architecture": "test_resnet",
        "num_classes": 1000,
        "pretrained_cfg": {
            "input_size": [3, 96, 96], "interpolation": "bilinear", "crop_pct": 0.8,
            "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "num_classes": 1000,
        },
    }  # fmt: skip
    name = "timm/hf-hub:someone/tiny"
    with pytest.raises(ModelError, match=r"^model: the config of timm/hf-hub:someone/tiny is not"):
        load_model(name, "none")
    timm_models.timm_spec.cache_clear()
    snapshot = hub_snapshot(
        tmp_path, "someone/tiny", {"config.json": lambda p: p.write_text(json.dumps(config))}
    )
    loaded = load_model(name, "none")
    assert loaded.input_size == (96, 96) and loaded.mean == (0.5,) * 3 and loaded.std == (0.25,) * 3
    own = loaded.own_preprocess()
    assert (own.resize, own.crop, own.interpolation) == (120, 96, "bilinear")
    with pytest.raises(ModelError, match=r"^weights: .*expected at .*/model\.safetensors"):
        load_model(name, "default")
    save_file(reference.state_dict(), snapshot / "model.safetensors")
    loaded = load_model(name, "default")
    assert loaded.weights == f"hf-hub:someone/tiny@{REVISION}"
    assert same_weights(loaded.model, reference)


def test_without_timm_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ModelError, match=r"^model: .*pip install 'xaibench\[timm\]'"):
        load_model("timm/resnet10t", "none")
    assert load_model("resnet18", "none").weights == "none"  # other models need no timm


def test_timm_models_are_built_on_the_meta_device_and_listed_by_pattern():
    model = skeleton("timm/test_vit")
    assert all(p.is_meta for p in model.parameters())
    assert model_input_size(model) == (160, 160)
    names = list_model_names("timm/test_vit*")
    assert names == [f"timm/{n}" for n in timm.list_models("test_vit*")] and len(names) >= 2
    assert "timm/resnet10t" not in list_model_names("*")  # the registered models only
