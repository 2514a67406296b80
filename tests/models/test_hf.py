"""Hugging Face image classifiers by name (`hf/MODEL_ID`): tiny random models written by
`save_pretrained` into a folder or a fake hub cache in a temporary folder (nothing is downloaded);
their preprocessing against the image processors themselves on real photographs."""

import hashlib
import shutil
import sys

import pytest
import torch
from huggingface_hub import constants
from PIL import Image

from xaibench.core.errors import ConfigError, ModelError
from xaibench.methods.support import skeleton
from xaibench.models import hf_models, load_model
from xaibench.models.factory import list_model_names, model_input_size

transformers = pytest.importorskip("transformers")
skimage_data = pytest.importorskip("skimage.data")

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache in `tmp_path`, the hub offline, no specs remembered."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hf_models.hf_spec.cache_clear()
    yield
    hf_models.hf_spec.cache_clear()


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=10,
    )  # fmt: skip
    return transformers.ViTForImageClassification(config).eval()


@pytest.fixture
def vit_folder(tmp_path):
    """A tiny ViT classifier (32 x 32, 10 classes) and its processor, as save_pretrained writes
    them: (folder, the model)."""
    folder = tmp_path / "tiny-vit"
    model = tiny_vit(seed=1)  # not RANDOM_INIT_SEED, which `weights` none builds
    model.save_pretrained(folder)
    processor = transformers.ViTImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.3, 0.4]
    )
    processor.save_pretrained(folder)
    return folder, model


def hub_snapshot(root, repo, folder):
    """A Hugging Face hub cache entry of `repo` at `REVISION` holding the files of `folder`."""
    entry = root / "hf" / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(REVISION)
    snapshot = entry / "snapshots" / REVISION
    shutil.copytree(folder, snapshot)
    return snapshot


def same_weights(a, b):
    return all(torch.equal(value, b.state_dict()[key]) for key, value in a.state_dict().items())


def test_a_folder_loads_with_its_weights_and_its_processors_settings(vit_folder):
    folder, reference = vit_folder
    loaded = load_model(f"hf/{folder}", "default")
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert loaded.weights == f"sha256:{digest}" and not loaded.model.training
    assert same_weights(loaded.model, reference)
    assert loaded.input_size == (32, 32) == model_input_size(loaded.model)
    assert (loaded.mean, loaded.std) == ((0.4, 0.5, 0.6), (0.2, 0.3, 0.4))
    images = torch.randn(2, 3, 32, 32)
    logits = loaded.model(images)
    assert isinstance(logits, torch.Tensor)
    torch.testing.assert_close(logits, reference(images).logits)
    own = loaded.own_preprocess()
    assert (own.name, own.resize, own.crop, own.interpolation) == (
        "model",
        (32, 32),
        None,
        "bilinear",
    )
    # the names of the layers and weights are transformers' own
    assert loaded.model.get_submodule("vit.layers.1.layernorm_before") is not None
    assert loaded.model.state_dict().keys() == reference.state_dict().keys()


def test_random_weights_and_a_state_dict_file(vit_folder, tmp_path):
    folder, reference = vit_folder
    random = load_model(f"hf/{folder}", "none")
    assert random.weights == "none" and not same_weights(random.model, reference)
    path = tmp_path / "mine.pt"
    torch.save(tiny_vit(seed=5).state_dict(), path)
    mine = load_model(f"hf/{folder}", str(path))
    assert mine.weights.startswith("sha256:") and same_weights(mine.model, tiny_vit(seed=5))
    with pytest.raises(ConfigError, match=r"^weights: 'IMAGENET1K_V1' is not a file; .*default"):
        load_model(f"hf/{folder}", "IMAGENET1K_V1")


def test_a_hub_repository_is_read_from_the_cache_and_listed(vit_folder, tmp_path):
    folder, reference = vit_folder
    with pytest.raises(ModelError) as caught:
        load_model("hf/someone/tiny-vit", "default")
    assert str(caught.value).startswith("model: someone/tiny-vit is not a folder, and the Hugging")
    assert "hf download someone/tiny-vit" in str(caught.value)
    assert not (tmp_path / "hf").exists()  # nothing was fetched
    hf_models.hf_spec.cache_clear()
    snapshot = hub_snapshot(tmp_path, "someone/tiny-vit", folder)
    loaded = load_model("hf/someone/tiny-vit", "default")
    assert loaded.weights == f"hf-hub:someone/tiny-vit@{REVISION}"
    assert same_weights(loaded.model, reference)
    assert load_model(f"hf/someone/tiny-vit@{REVISION}", "none").input_size == (32, 32)
    backbone = tmp_path / "backbone"
    transformers.ViTModel(reference.config).save_pretrained(backbone)  # not a classifier
    hub_snapshot(tmp_path, "someone/backbone", backbone)
    assert list_model_names("hf/*") == ["hf/someone/tiny-vit"]
    assert list_model_names("hf/other/*") == []
    (snapshot / "model.safetensors").unlink()
    hf_models.hf_spec.cache_clear()
    with pytest.raises(ModelError, match=r"^weights: the weights of hf/someone/tiny-vit are not"):
        load_model("hf/someone/tiny-vit", "default")


def test_what_is_not_an_image_classifier_is_refused(tmp_path, vit_folder):
    bert = tmp_path / "bert"
    transformers.BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(bert)
    with pytest.raises(ConfigError, match=r"^model: hf/.*bert is a 'bert' model, which"):
        load_model(f"hf/{bert}", "none")
    folder, _ = vit_folder
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ModelError, match=r"^model: .* no image processor stating its mean and std"):
        load_model(f"hf/{folder}", "none")


def test_without_transformers_the_error_names_the_extra(monkeypatch, vit_folder):
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` raises
    with pytest.raises(ModelError, match=r"^model: .*pip install 'xaibench\[hf\]'"):
        load_model(f"hf/{vit_folder[0]}", "none")


def test_hf_models_are_built_on_the_meta_device(vit_folder):
    model = skeleton(f"hf/{vit_folder[0]}")
    assert all(p.is_meta for p in model.parameters())
    assert model_input_size(model) == (32, 32)


PROCESSORS = {
    # name: (processor, (resize, crop) expected)
    "vit": (lambda: transformers.ViTImageProcessorPil(), ((224, 224), None)),
    "deit": (lambda: transformers.DeiTImageProcessorPil(), ((256, 256), 224)),
    "convnext": (
        lambda: transformers.ConvNextImageProcessorPil(size={"shortest_edge": 224}),
        (256, 224),
    ),
    "convnext_384": (lambda: transformers.ConvNextImageProcessorPil(), ((384, 384), None)),
    "bit": (lambda: transformers.BitImageProcessorPil(), (224, 224)),
    "beit": (lambda: transformers.BeitImageProcessorPil(), ((224, 224), None)),
}


@pytest.mark.parametrize("kind", list(PROCESSORS))
def test_the_preprocessing_equals_the_image_processors(kind):
    """Equal to the processor's PIL backend pixel for pixel, on a square and an oblong photo
    whose crop margins are even (odd ones round as torchvision does: hf_models)."""
    build, (resize, crop) = PROCESSORS[kind]
    processor = build()
    ours = hf_models.processor_preprocess(processor.to_dict(), kind)
    assert (ours.resize, ours.crop) == (resize, crop)
    assert ours.interpolation == hf_models.PIL_RESAMPLE[processor.resample]
    for photo in (skimage_data.astronaut(), skimage_data.chelsea()):
        image = Image.fromarray(photo)
        expected = torch.as_tensor(processor(image, return_tensors="pt")["pixel_values"][0])
        torch.testing.assert_close(ours(image), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rescale_factor": 1 / 127.5}, "rescales by"),
        ({"do_rescale": False}, "does not scale pixels"),
        ({"crop_pct": 0.9}, "crops a fraction"),
        ({"size": {"shortest_edge": 256}}, "resizes the shorter side without a crop"),
        ({"size": {"shortest_edge": 256, "longest_edge": 512}}, "resizes to"),
        ({"resample": 7}, "resamples with filter 7"),
    ],
)
def test_settings_it_does_not_reproduce_are_refused(change, message):
    settings = {**transformers.ViTImageProcessorPil().to_dict(), **change}
    with pytest.raises(ConfigError, match=rf"^preprocessing: m's image processor {message}"):
        hf_models.processor_preprocess(settings, "m")


def test_a_refused_processor_leaves_the_protocols_preprocessing(vit_folder):
    folder, _ = vit_folder
    processor = transformers.ViTImageProcessorPil(size={"shortest_edge": 40}, image_mean=[0.5] * 3)
    processor.save_pretrained(folder)
    loaded = load_model(f"hf/{folder}", "none")
    assert loaded.input_size == (32, 32)  # the config's image_size
    with pytest.raises(ConfigError, match="use `preprocessing` protocol"):
        loaded.own_preprocess()
