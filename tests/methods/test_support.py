import pytest
import torch
import torchvision
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods import METHODS, GradCAM, PolyCAM
from xaibench.methods.support import REQUIREMENTS, inspect_model, skeleton, support_by_name
from xaibench.models import MODELS


@pytest.fixture(scope="module")
def vit():
    with torch.device("meta"):
        return torchvision.models.vit_b_16(weights=None)


@pytest.mark.parametrize(
    ("name", "layer", "bias_terms", "relu_modules"),
    [
        ("vgg16", "features", "yes", "yes"),
        ("resnet50", "layer4", "yes", "yes"),
        ("densenet121", "features", "yes", "yes"),
        ("shufflenet_v2_x0_5", "conv5", "yes", "yes"),
        ("regnet_x_400mf", "trunk_output", "yes", "yes"),
        ("regnet_y_400mf", "trunk_output", "approximate", "yes"),
        ("mobilenet_v2", "features", "approximate", "no"),
        ("mobilenet_v3_small", "features", "approximate", "partial"),
        ("efficientnet_b0", "features", "approximate", "no"),
        ("googlenet", "inception5b", "yes", "no"),
        ("inception_v3", "Mixed_7c", "yes", "no"),
        ("convnext_tiny", "features", "approximate", "no"),
        ("swin_t", "permute", "no", "no"),
        ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", "no", "no"),
    ],
)
def test_support_of_families(name, layer, bias_terms, relu_modules):
    found = support_by_name(name)
    assert found.cam_layer == layer
    assert found.findings["cam_layer"].status == "yes"
    transformer = name.startswith("vit")
    assert found.findings["feature_map"].status == ("no" if transformer else "yes")
    assert found.findings["class_attention"].status == ("yes" if transformer else "no")
    assert found.findings["bias_terms"].status == bias_terms
    assert found.findings["relu_modules"].status == relu_modules
    assert found.input_size == MODELS.get(name).input_size


def test_reasons_name_the_pieces():
    assert "ReLU6 clipping" in support_by_name("mobilenet_v2").findings["bias_terms"].reason
    pieces = support_by_name("efficientnet_b0").pieces
    assert {"SiLU", "sigmoid"} <= set(pieces)
    assert any("squeeze-and-excitation" in piece for piece in pieces)
    assert "Hardswish" in support_by_name("mobilenet_v3_small").findings["relu_modules"].reason
    assert "F.relu" in support_by_name("googlenet").findings["relu_modules"].reason
    assert "attention" in support_by_name("vit_b_16").findings["bias_terms"].reason


def test_inception_is_traced_at_its_own_input_size():
    assert support_by_name("inception_v3").input_size == (299, 299)


def test_methods_combine_their_requirements():
    found = support_by_name("vit_b_16")
    methods = found.methods()
    assert set(methods) == set(METHODS.names())
    assert methods["gradient"].status == "yes" and methods["rise"].status == "yes"
    assert methods["gradcam"].status == "yes"
    assert "token sequence" in found.findings["cam_layer"].reason
    assert methods["rollout"].status == methods["attn_grad"].status == "yes"
    assert methods["polycam"].status == "no" and "patch embedding" in methods["polycam"].reason
    for name in ("tgrad", "fullgrad"):
        assert methods[name].status == "no" and "attention" in methods[name].reason
    assert methods["occlusion"].status == "yes"
    guided = methods["guidedgradcam"].reason
    assert methods["guidedgradcam"].status == "no" and "nn.ReLU" in guided
    cnn = support_by_name("resnet18").methods()
    for name in ("rollout", "attn_grad"):
        assert cnn[name].status == "no" and "no attention module" in cnn[name].reason
    swin = support_by_name("swin_t").methods()["rollout"]
    assert swin.status == "no" and "no attention module" in swin.reason


def test_cam_methods_read_a_vision_transformer_poly_cam_refuses_it(vit):
    assert GradCAM(vit).layer == "encoder.layers.encoder_layer_11.ln_1"
    with pytest.raises(ConfigError, match=r"patch embedding.*layers="):
        PolyCAM(vit)
    assert GradCAM(vit, layer="conv_proj").layer == "conv_proj"


def test_constant_offsets_and_batch_statistics():
    class Offset(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x * 0.5 + 0.1)).mean(dim=(2, 3)))

    found = inspect_model(Offset(), (16, 16))
    assert found.findings["bias_terms"].status == "approximate"
    assert "constant added" in found.findings["bias_terms"].reason
    assert found.findings["relu_modules"].status == "no"
    no_stats = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten()
    )
    found = inspect_model(no_stats, (8, 8))
    assert found.findings["bias_terms"].status == "no"
    assert "running statistics" in found.findings["bias_terms"].reason


def test_a_model_that_fails_at_the_size_is_reported_not_raised(vit):
    found = inspect_model(vit, (64, 64))
    assert all(f.status == "no" for f in found.findings.values())
    assert "64x64" in found.findings["feature_map"].reason


def test_skeleton_needs_no_weights_and_restores_module_registration():
    register = nn.Module.register_parameter
    model = skeleton("regnet_x_400mf")  # its constructor computes with tensors: the fallback
    assert all(p.is_meta for p in model.parameters())
    assert all(b.is_meta for b in model.buffers())
    assert nn.Module.register_parameter is register
    after = nn.BatchNorm2d(2)  # built after the fallback: on the default device again
    assert not any(t.is_meta for t in [*after.parameters(), *after.buffers()])
    assert all(p.is_meta for p in skeleton("resnet18").parameters())


@pytest.mark.slow
def test_every_registered_model_gets_a_verdict():
    for name in MODELS.names():
        found = support_by_name(name)
        assert set(found.findings) == set(REQUIREMENTS), name
