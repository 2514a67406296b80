"""The methods of Captum and pytorch-grad-cam run through xaibench (`captum.CLASS`,
`gradcam-lib.CLASS`): each equals the library called directly on the same model, images, targets
and settings; settings are checked against the library's signatures; the store records the library.
"""

import sys
from importlib import metadata

import numpy as np
import pytest
import torch
from captum import attr
from pytorch_grad_cam import (
    KPCA_CAM,
    EigenGradCAM,
    FinerCAM,
    GradCAM,
    RandomCAM,
    ScoreCAM,
    ShapleyCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from xaibench.core.batching import ChunkSize
from xaibench.core.errors import ConfigError, UnknownNameError
from xaibench.methods import METHODS, Passes
from xaibench.methods.cost import method_passes
from xaibench.methods.settings import method_params
from xaibench.methods.support import inspect_model
from xaibench.store import open_store

SIDE = 32
TARGETS = torch.tensor([1, 3])


class LRPNet(nn.Module):
    """Conv, ReLU, max-pool and linear modules only, each used once (what Captum's LRP takes)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.fc = nn.Linear(8 * (SIDE // 4) ** 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(5))


def zeros_like_distribution(images: torch.Tensor) -> torch.Tensor:
    return torch.zeros(2, *images.shape[1:])


CAPTUM_CASES = [
    # name, xaibench settings, the direct call: (model, layer module) -> attribution (B, C, h, w)
    ("Saliency", {}, lambda m, _, x, t: attr.Saliency(m).attribute(x, target=t)),
    (
        "IntegratedGradients",
        {"n_steps": 8, "baselines": 0.5},
        lambda m, _, x, t: attr.IntegratedGradients(m).attribute(
            x, target=t, n_steps=8, baselines=0.5
        ),
    ),
    (
        "GradientShap",
        {"n_samples": 4, "stdevs": 0.1, "seed": 7},
        lambda m, _, x, t: seeded(7, attr.GradientShap(m).attribute)(
            x, zeros_like_distribution(x), n_samples=4, stdevs=0.1, target=t
        ),
    ),
    (
        "Occlusion",
        {"sliding_window_shapes": [3, 8, 8], "strides": [3, 8, 8]},
        lambda m, _, x, t: attr.Occlusion(m).attribute(
            x, (3, 8, 8), strides=(3, 8, 8), target=t, baselines=0.0
        ),
    ),
    (
        "FeatureAblation",
        {"perturbations_per_eval": 128, "baselines": -1},
        lambda m, _, x, t: attr.FeatureAblation(m).attribute(
            x, target=t, perturbations_per_eval=128, baselines=-1.0
        ),
    ),
    (
        "LayerGradCam",
        {"layer": "layer1", "relu_attributions": True},
        lambda m, layer, x, t: attr.LayerGradCam(m, layer).attribute(
            x, target=t, relu_attributions=True
        ),
    ),
]


def seeded(seed, function):
    def call(*args, **kwargs):
        torch.manual_seed(seed)
        np.random.seed(seed)
        return function(*args, **kwargs)

    return call


REDUCE_CASES = [
    (*case, reduce)
    for case in CAPTUM_CASES
    for reduce in ("sum", "abs_sum", "max_abs")
    if case[0] != "FeatureAblation" or reduce == "sum"  # one forward per feature: slow, once
]


@pytest.mark.parametrize(
    ("name", "settings", "direct", "reduce"),
    REDUCE_CASES,
    ids=[f"{c[0]}-{c[3]}" for c in REDUCE_CASES],
)
def test_a_captum_method_equals_captum_called_directly(
    tiny_resnet, batch, no_hooks_left, name, settings, direct, reduce
):
    method = METHODS.get(f"captum.{name}")(tiny_resnet, **settings, reduce=reduce)
    explanation = method(batch, TARGETS)
    layer = tiny_resnet.get_submodule(settings.get("layer", "layer2"))
    expected = direct(tiny_resnet, layer, batch, TARGETS).detach()
    reduced = {"sum": expected.sum(1), "abs_sum": expected.abs().sum(1)}
    reduced["max_abs"] = expected.abs().amax(1)
    torch.testing.assert_close(explanation.maps, reduced[reduce], rtol=1e-5, atol=1e-6)
    assert explanation.maps.dtype == torch.float32 and explanation.logits is None
    assert explanation.targets.tolist() == TARGETS.tolist()
    assert method.params["reduce"] == reduce
    no_hooks_left(tiny_resnet)
    assert all(not p.requires_grad or p.grad is None for p in tiny_resnet.parameters())


def test_captum_lrp_and_deeplifts_equal_captum(batch, no_hooks_left):
    """On a network whose modules each run once, as Captum's LRP and DeepLift need."""
    model = LRPNet().eval()
    maps = METHODS.get("captum.LRP")(model)(batch, TARGETS).maps
    expected = attr.LRP(model).attribute(batch, target=TARGETS).detach().sum(1)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
    maps = METHODS.get("captum.DeepLift")(model, reduce="abs_sum")(batch, TARGETS).maps
    expected = attr.DeepLift(model).attribute(batch, target=TARGETS, baselines=0.0).detach()
    torch.testing.assert_close(maps, expected.abs().sum(1), rtol=1e-5, atol=1e-6)
    maps = METHODS.get("captum.DeepLiftShap")(model, baselines=0.25)(batch, TARGETS).maps
    reference = torch.full((2, *batch.shape[1:]), 0.25)
    expected = attr.DeepLiftShap(model).attribute(batch, reference, target=TARGETS).sum(1)
    torch.testing.assert_close(maps, expected.detach(), rtol=1e-5, atol=1e-6)
    no_hooks_left(model)


def test_without_targets_the_top1_class_is_explained_and_the_logits_kept(tiny_resnet, batch):
    explanation = METHODS.get("captum.IntegratedGradients")(tiny_resnet, n_steps=4)(batch)
    logits = tiny_resnet(batch).detach()
    top1 = logits.argmax(1)
    torch.testing.assert_close(explanation.logits, logits)
    assert explanation.targets.tolist() == top1.tolist()
    expected = attr.IntegratedGradients(tiny_resnet).attribute(batch, target=top1, n_steps=4)
    torch.testing.assert_close(explanation.maps, expected.detach().sum(1), rtol=1e-5, atol=1e-6)


def test_convergence_delta_is_an_extra_and_chunks_join(tiny_resnet, batch):
    method = METHODS.get("captum.IntegratedGradients")(
        tiny_resnet, n_steps=4, return_convergence_delta=True
    )
    whole = method(batch, TARGETS)
    chunked = method.call_in_chunks(batch, TARGETS, ChunkSize(1))
    assert whole.extras["convergence_delta"].shape == (2,)
    torch.testing.assert_close(chunked.maps, whole.maps)
    torch.testing.assert_close(
        chunked.extras["convergence_delta"], whole.extras["convergence_delta"]
    )


GRADCAM_CASES = [
    ("GradCAM", GradCAM, {}),
    ("XGradCAM", XGradCAM, {}),
    ("EigenGradCAM", EigenGradCAM, {}),
    ("ScoreCAM", ScoreCAM, {}),
    ("KPCA_CAM", KPCA_CAM, {"kernel": "rbf"}),
    ("ShapleyCAM", ShapleyCAM, {}),
    ("RandomCAM", RandomCAM, {"seed": 11}),
]


@pytest.mark.parametrize(
    ("name", "cls", "settings"), GRADCAM_CASES, ids=[c[0] for c in GRADCAM_CASES]
)
def test_a_gradcam_lib_method_equals_pytorch_grad_cam_called_directly(
    tiny_resnet, batch, no_hooks_left, name, cls, settings
):
    method = METHODS.get(f"gradcam-lib.{name}")(tiny_resnet, layer="layer1", **settings)
    maps = method(batch, TARGETS).maps
    construct = {k: v for k, v in settings.items() if k != "seed"}
    np.random.seed(settings.get("seed", 0))
    with cls(tiny_resnet, [tiny_resnet.layer1], **construct) as cam:
        expected = cam(batch, [ClassifierOutputTarget(int(c)) for c in TARGETS])
    assert maps.shape == (2, SIDE, SIDE) and maps.dtype == torch.float32
    torch.testing.assert_close(maps, torch.from_numpy(expected), rtol=1e-5, atol=1e-6)
    assert method.params["layer"] == "layer1"
    no_hooks_left(tiny_resnet)


def test_gradcam_lib_default_layer_is_xaibenchs_cam_layer(tiny_resnet):
    assert METHODS.get("gradcam-lib.GradCAM")(tiny_resnet).params["layer"] == "layer2"
    assert METHODS.get("captum.LayerGradCam")(tiny_resnet).params["layer"] == "layer2"


def test_finer_cam_explains_each_image_against_its_nearest_classes(tiny_resnet, batch):
    method = METHODS.get("gradcam-lib.FinerCAM")(tiny_resnet, alpha=0.7)
    top1 = method(batch).maps
    with FinerCAM(tiny_resnet, [tiny_resnet.layer2]) as cam:
        expected = cam(batch, alpha=0.7)
    torch.testing.assert_close(top1, torch.from_numpy(expected), rtol=1e-5, atol=1e-6)
    same = torch.tensor([2, 2])
    with FinerCAM(tiny_resnet, [tiny_resnet.layer2]) as cam:
        expected = cam(batch, alpha=0.7, target_idx=2)
    torch.testing.assert_close(
        method(batch, same).maps, torch.from_numpy(expected), rtol=1e-5, atol=1e-6
    )


def test_gradcam_lib_hooks_are_removed_after_an_exception(tiny_resnet, batch, no_hooks_left):
    method = METHODS.get("gradcam-lib.GradCAM")(tiny_resnet)
    tiny_resnet.fail = True
    with pytest.raises(RuntimeError, match="forced failure"):
        method(batch, TARGETS)
    no_hooks_left(tiny_resnet)


def test_names_resolve_once_and_list_by_prefix():
    assert METHODS.get("captum.Saliency") is METHODS.get("captum.Saliency")
    captum_names = METHODS.names("captum.*")
    assert {"captum.Occlusion", "captum.LRP", "captum.LayerGradCam", "captum.KernelShap"} <= set(
        captum_names
    )
    assert not [n for n in captum_names if "Neuron" in n or n == "captum.NoiseTunnel"]
    cams = set(METHODS.names("gradcam-lib.*"))
    assert {"gradcam-lib.EigenGradCAM", "gradcam-lib.KPCA_CAM", "gradcam-lib.FEM"} <= cams
    assert "gradcam-lib.ActivationsAndGradients" not in cams
    assert not [n for n in METHODS.names() if "." in n]
    assert METHODS.entry("captum.Saliency").help.startswith("Saliency of captum")
    assert METHODS.get("captum.Saliency").library == {
        "name": "captum",
        "version": metadata.version("captum"),
    }


def test_an_unknown_class_names_close_ones():
    with pytest.raises(UnknownNameError, match=r"captum\.Occlusion") as error:
        METHODS.get("captum.Ocllusion", param="methods")
    assert error.value.param == "methods" and "list methods 'captum.*'" in str(error.value)
    with pytest.raises(UnknownNameError, match=r"gradcam-lib\.GradCAM"):
        METHODS.get("gradcam-lib.GradCam")


def test_a_library_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setattr(METHODS, "_resolved", {})
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(ConfigError, match=r"pip install 'xaibench\[captum\]'") as error:
        METHODS.get("captum.Saliency", param="methods")
    assert error.value.param == "methods"
    with pytest.raises(ConfigError, match=r"pip install 'xaibench\[gradcam\]'"):
        METHODS.get("gradcam-lib.GradCAM")


def test_settings_are_checked_against_the_librarys_signatures(tiny_resnet):
    with pytest.raises(ConfigError, match=r"no setting 'nsteps' \(did you mean n_steps") as error:
        METHODS.get("captum.IntegratedGradients")(tiny_resnet, nsteps=3)
    assert error.value.param == "params" and "internal_batch_size" in str(error.value)
    with pytest.raises(ConfigError, match="needs the setting 'sliding_window_shapes'"):
        METHODS.get("captum.Occlusion")(tiny_resnet)
    with pytest.raises(ConfigError, match="reduce 'mean'"):
        METHODS.get("captum.Saliency")(tiny_resnet, reduce="mean")
    with pytest.raises(ConfigError, match="baselines"):
        METHODS.get("captum.IntegratedGradients")(tiny_resnet, baselines=[0, 1])
    with pytest.raises(ConfigError, match="is not a class of pytorch_grad_cam"):
        METHODS.get("gradcam-lib.FinerCAM")(tiny_resnet, base_method="GradCum")
    with pytest.raises(ConfigError, match="no setting 'reduce'"):
        METHODS.get("gradcam-lib.GradCAM")(tiny_resnet, reduce="sum")


def test_method_params_take_the_librarys_settings():
    chosen = method_params(
        ["captum.Occlusion", "gradcam-lib.FinerCAM"],
        (
            "captum.Occlusion.sliding_window_shapes=[3,16,16]",
            "gradcam-lib.FinerCAM.base_method=GradCAMPlusPlus",
        ),
        layer="layer4",
    )
    assert chosen == {
        "captum.Occlusion": {"sliding_window_shapes": [3, 16, 16]},
        "gradcam-lib.FinerCAM": {"base_method": "GradCAMPlusPlus", "layer": "layer4"},
    }
    with pytest.raises(ConfigError, match="its settings: abs, reduce, seed") as error:
        method_params(["captum.Saliency"], ("captum.Saliency.n_steps=3",))
    assert error.value.param == "params"
    with pytest.raises(ConfigError, match="sliding_window_shapes"):
        method_params(["captum.Occlusion"], ())


class Counts:
    def __init__(self, model: nn.Module):
        self.forwards = self.backwards = 0

        def on_forward(_module, _args, output):
            self.forwards += output.shape[0]
            if output.requires_grad:
                output.register_hook(
                    lambda grad: setattr(self, "backwards", self.backwards + grad.shape[0])
                )

        self.handle = model.register_forward_hook(on_forward)


@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("captum.Saliency", {}),
        ("captum.IntegratedGradients", {"n_steps": 5}),
        ("captum.GradientShap", {"n_samples": 3}),
        ("captum.LayerGradCam", {}),
        ("captum.GuidedGradCam", {}),
        ("gradcam-lib.GradCAM", {}),
        ("gradcam-lib.EigenCAM", {}),
    ],
)
def test_declared_passes_are_the_passes_run(tiny_resnet, batch, name, settings):
    cls = METHODS.get(name)
    method = cls(tiny_resnet, **settings)
    counts = Counts(tiny_resnet)
    method(batch)
    counts.handle.remove()
    declared = cls.passes(settings)
    assert (counts.forwards, counts.backwards) == (2 * declared.forwards, 2 * declared.backwards)


def test_passes_unknown_where_the_library_does_not_say(tiny_resnet):
    assert METHODS.get("captum.Occlusion").passes({"sliding_window_shapes": [3, 8, 8]}) is None
    assert METHODS.get("gradcam-lib.ScoreCAM").passes({}) is None
    assert METHODS.get("gradcam-lib.GradCAM").passes({"aug_smooth": True}) is None
    assert method_passes("captum.IntegratedGradients", {"n_steps": 8}, "resnet18") == Passes(9, 8)
    assert method_passes("captum.Lime", {}, "resnet18") is None


def test_support_verdicts_cover_the_families(tiny_resnet):
    found = inspect_model(tiny_resnet, (SIDE, SIDE))
    assert found.method("gradcam-lib.ScoreCAM").status == "yes"
    assert found.method("captum.Saliency").status == "yes"
    silu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 2))
    assert inspect_model(silu, (SIDE, SIDE)).method("captum.GuidedBackprop").status == "no"
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, 2))
    assert inspect_model(flat, (SIDE, SIDE)).method("captum.LayerGradCam").status == "no"
    assert inspect_model(flat, (SIDE, SIDE)).method("gradcam-lib.GradCAM").status == "no"


def test_generate_through_the_cli_records_the_library_and_evaluate_scores(
    image_folder, tmp_path, invoke
):
    out = tmp_path / "runs"
    result = invoke(
        "generate", "--model", "tiny_models:tiny_cnn", "--saliency",
        "captum.Saliency,gradcam-lib.EigenGradCAM", "--param", "captum.Saliency.reduce=max_abs",
        "--data", image_folder, "--out", out, "--batch-size", 4, "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    stores = [
        out / "tiny_models_tiny_cnn" / f"{m}.h5"
        for m in ("captum.Saliency", "gradcam-lib.EigenGradCAM")
    ]
    for store_file, library, shape in zip(
        stores, ("captum", "grad-cam"), ((224, 224), (224, 224)), strict=True
    ):
        with open_store(store_file) as store:
            assert store.complete and len(store) == 6
            assert store.meta.method_library == {
                "name": library,
                "version": metadata.version(library),
            }
            assert store.read_maps([0]).shape == (1, *shape)
            assert np.isfinite(store.seconds).all() and (store.seconds > 0).all()
    with open_store(stores[0]) as store:
        assert store.meta.method_params == {"reduce": "max_abs", "seed": None}
    result = invoke(
        "evaluate", "--model", "tiny_models:tiny_cnn", "--store", stores[0], "--store", stores[1],
        "--data", image_folder, "--step", 3136, "--metrics", "insertion,deletion", "--batch-size", 4,
        "--quiet",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    tables = sorted((out / "tiny_models_tiny_cnn" / "metrics").glob("*.per_image.csv"))
    assert [t.name.split("-polycam")[0] for t in tables] == [
        "captum.Saliency",
        "gradcam-lib.EigenGradCAM",
    ]


def test_the_cli_names_a_bad_class_and_a_bad_setting(image_folder, invoke):
    result = invoke(
        "generate", "--model", "tiny_models:tiny_cnn", "--saliency", "captum.Ocllusion",
        "--data", image_folder, "--out", image_folder.parent / "runs", catch_exceptions=True,
    )  # fmt: skip
    assert result.exit_code != 0 and result.exception.param == "methods"
    assert "captum.Occlusion" in str(result.exception)
    result = invoke(
        "generate", "--model", "tiny_models:tiny_cnn", "--saliency", "captum.Occlusion",
        "--param", "captum.Occlusion.window=3", "--data", image_folder,
        "--out", image_folder.parent / "runs", catch_exceptions=True,
    )  # fmt: skip
    assert result.exit_code != 0 and result.exception.param == "params"
    assert "sliding_window_shapes" in str(result.exception)
