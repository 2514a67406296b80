"""`xaibench explain`: the PNG's size follows its layout; classes and maps are the model's own."""

import pytest
import torch
from PIL import Image
from tiny_run import make_images

from xaibench.core.errors import ConfigError
from xaibench.data.classes import imagenet_classes
from xaibench.data.dataset import load_rgb
from xaibench.methods import METHODS
from xaibench.metrics import get_protocol
from xaibench.models import load_model
from xaibench.pipelines.explain import explain_image
from xaibench.report.explain import figure_layout
from xaibench.report.plots import DPI, PANEL_INCHES

MODEL = "tiny_models:tiny_cnn"
PANEL = round(PANEL_INCHES * DPI)


@pytest.fixture()
def photo(tmp_path):
    return next(make_images(tmp_path / "img", count=1).rglob("*.png"))


def test_png_size_follows_the_layout_with_tgrad_terms(photo, tmp_path, invoke):
    out = tmp_path / "explain.png"
    result = invoke(
        "explain",
        photo,
        "--model",
        MODEL,
        "--saliency",
        "tgrad,gradcam",
        "--tgrad-layers",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    loaded = load_model(MODEL)
    image = get_protocol("polycam").preprocess(loaded.mean, loaded.std)(load_rgb(photo))[None]
    tgrad = METHODS.get("tgrad")(loaded.model)(image)
    terms = len(tgrad.extras["terms"].names)  # input + conv biases + batch norm
    rows, columns = figure_layout(2, terms)
    assert (rows, columns) == (1 + -(-terms // 4) + 1, 4)
    assert Image.open(out).size == (columns * PANEL, rows * PANEL)
    assert str(out) in result.output


def test_top_classes_and_maps_are_the_models(photo):
    loaded = load_model(MODEL)
    result = explain_image(photo, loaded, ["gradcam", "random"], device=torch.device("cpu"))
    image = get_protocol("polycam").preprocess(loaded.mean, loaded.std)(load_rgb(photo))[None]
    with torch.no_grad():
        probabilities = loaded.model(image).softmax(1)[0]
    best = probabilities.topk(5)
    assert [i for i, _, _ in result.top] == best.indices.tolist()
    assert [p for *_, p in result.top] == pytest.approx(best.values.tolist(), rel=1e-5)
    assert result.top[0][1] == imagenet_classes().names(best.indices[0].item()).split(",")[0]
    gradcam = METHODS.get("gradcam")(loaded.model)(image, best.indices[:1])
    small = torch.nn.functional.interpolate(
        gradcam.maps[:, None], size=(224, 224), mode="bilinear", align_corners=False
    )[0, 0]
    torch.testing.assert_close(torch.from_numpy(result.maps["gradcam"]), small)
    assert result.image.shape == (224, 224, 3) and result.terms is None
    assert result.image.min() >= 0 and result.image.max() <= 1


def test_tgrad_layers_without_tgrad_is_refused(photo):
    with pytest.raises(ConfigError, match="add tgrad"):
        explain_image(
            photo, load_model(MODEL), ["gradcam"], device=torch.device("cpu"), tgrad_layers=True
        )


@pytest.mark.slow
def test_efficientnet_lite0_recognises_the_cat(tmp_path, invoke):
    from xaibench.data.samples import build_sample_dataset

    cat = build_sample_dataset(tmp_path / "data") / "n02124075" / "chelsea.png"
    out = tmp_path / "cat.png"
    result = invoke(
        "explain",
        cat,
        "--model",
        "efficientnet_lite0",
        "--saliency",
        "tgrad,gradcam,random",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "Egyptian cat (285)" in result.output
    assert Image.open(out).size == (5 * PANEL, PANEL)


def test_cam_methods_on_one_layer_share_one_pass(photo, tmp_path):
    loaded = load_model(MODEL)
    image = get_protocol("polycam").preprocess(loaded.mean, loaded.std)(load_rgb(photo))[None]
    forwards = []
    handle = loaded.model.register_forward_hook(lambda m, args, out: forwards.append(1))
    cams = ["gradcam", "gradcampp", "layercam"]
    result = explain_image(
        photo,
        loaded,
        [*cams, "random"],
        device=torch.device("cpu"),
        method_params={name: {"layer": "3"} for name in cams},
    )
    handle.remove()
    assert len(forwards) == 2  # the top classes, then one pass for the three CAM methods
    target = torch.tensor([result.top[0][0]])
    for name in cams:
        alone = METHODS.get(name)(loaded.model, layer="3")(image, target).maps[:, None]
        resized = torch.nn.functional.interpolate(
            alone, size=(224, 224), mode="bilinear", align_corners=False
        )[0, 0]
        torch.testing.assert_close(torch.from_numpy(result.maps[name]), resized)
    assert list(result.maps) == [*cams, "random"]


def test_layer_and_param_options_reach_the_methods(photo, tmp_path, invoke):
    out = tmp_path / "explain.png"
    args = ["explain", photo, "--model", MODEL, "--saliency", "gradcam", "--out", out]
    assert invoke(*args, "--layer", "3").exit_code == 0  # a numeric module name stays text
    result = invoke(*args, "--layer", "nolayer", catch_exceptions=True)
    assert result.exit_code != 0 and "no layer 'nolayer'" in str(result.exception)
    result = invoke(*args, "--param", "gradcam.colour=1", catch_exceptions=True)
    assert result.exit_code != 0 and "gradcam has no setting 'colour'" in str(result.exception)


def test_target_explains_the_class_asked_for(photo):
    loaded = load_model(MODEL)
    image = get_protocol("polycam").preprocess(loaded.mean, loaded.std)(load_rgb(photo))[None]
    with torch.no_grad():
        probabilities = loaded.model(image).softmax(1)[0]
    runner_up = int(probabilities.topk(2).indices[1])
    wnid = imagenet_classes().wnid(runner_up)
    for target in (str(runner_up), wnid):
        result = explain_image(
            photo, loaded, ["gradcam"], device=torch.device("cpu"), target=target
        )
        assert result.target[0] == runner_up != result.top[0][0]
        assert result.target[2] == pytest.approx(float(probabilities[runner_up]), rel=1e-5)
        gradcam = METHODS.get("gradcam")(loaded.model)(image, torch.tensor([runner_up]))
        small = torch.nn.functional.interpolate(
            gradcam.maps[:, None], size=(224, 224), mode="bilinear", align_corners=False
        )[0, 0]
        torch.testing.assert_close(torch.from_numpy(result.maps["gradcam"]), small)
    predicted = explain_image(photo, loaded, ["gradcam"], device=torch.device("cpu"))
    assert predicted.target == predicted.top[0]


def test_target_label_reads_the_class_folder(tmp_path):
    folder = tmp_path / "n02123045"
    folder.mkdir()
    image = folder / "cat.png"
    Image.new("RGB", (64, 64), (120, 90, 60)).save(image)
    result = explain_image(
        image, load_model(MODEL), ["random"], device=torch.device("cpu"), target="label"
    )
    assert result.target[:2] == (281, "tabby")


def test_bad_targets_are_refused_with_the_fix(photo, tmp_path, invoke):
    loose = tmp_path / "loose.png"
    Image.new("RGB", (64, 64)).save(loose)
    with pytest.raises(ConfigError, match="is not a WNID"):
        explain_image(
            loose, load_model(MODEL), ["random"], device=torch.device("cpu"), target="label"
        )
    with pytest.raises(ConfigError, match=r"names 2 classes: 134 .*517"):
        imagenet_classes().resolve("crane")
    with pytest.raises(ConfigError, match="did you mean 'tabby'"):
        imagenet_classes().resolve("tabbby")
    with pytest.raises(ConfigError, match="below 1000"):
        imagenet_classes().resolve("1000")
    assert imagenet_classes().resolve(" Tabby Cat ") == 281
    out = tmp_path / "never.png"
    with pytest.raises(ConfigError, match="did you mean"):  # checked before the model is built
        invoke(
            "explain", photo, "--model", "no_such_model", "--saliency", "gradcam",
            "--target", "tabbby", "--out", out,
        )  # fmt: skip
    assert not out.exists()


def test_cli_names_the_class_explained(photo, tmp_path, invoke):
    loaded = load_model(MODEL)
    predicted = explain_image(photo, loaded, ["random"], device=torch.device("cpu")).top[0][0]
    other = (predicted + 1) % 10
    name = imagenet_classes().short_name(other)
    out = tmp_path / "explain.png"
    result = invoke(
        "explain", photo, "--model", MODEL, "--saliency", "gradcam", "--target", other, "--out", out
    )
    assert result.exit_code == 0, result.output
    assert f"; maps of {name} ({other}) p=" in result.output
    assert out.exists()


def test_a_class_index_is_ascii_digits():
    with pytest.raises(ConfigError, match="not an ImageNet-1k class name"):
        imagenet_classes().resolve("²")
