import pytest
import torch
import torchvision
from torch import nn

from xaibench.core.errors import ConfigError
from xaibench.methods.layers import find_target_layer, validate_layer


def meta_model(factory, **kwargs) -> nn.Module:
    """A torchvision architecture on the meta device: no weights allocated, shapes only."""
    with torch.device("meta"):
        return factory(weights=None, **kwargs)


@pytest.mark.parametrize(
    ("factory", "expected", "same_tensor_as"),
    [
        (torchvision.models.vgg16, "features", "features.30"),
        (torchvision.models.resnet18, "layer4", "layer4"),
        (torchvision.models.densenet121, "features", "features.norm5"),
        (torchvision.models.efficientnet_b0, "features", "features.8"),
        (torchvision.models.mobilenet_v3_small, "features", "features.12"),
    ],
)
def test_default_layer_is_the_last_feature_map(factory, expected, same_tensor_as, no_hooks_left):
    model = meta_model(factory)
    assert find_target_layer(model) == expected
    # the chosen module outputs the same tensor as the layer pytorch-grad-cam's docs name
    outputs = {}
    for name in (expected, same_tensor_as):
        model.get_submodule(name).register_forward_hook(
            lambda m, i, o, name=name: outputs.setdefault(name, o)
        )
    model.eval()(torch.zeros(1, 3, 224, 224, device="meta"))
    assert outputs[expected] is outputs[same_tensor_as]


def test_default_layer_at_small_inputs_and_training_mode_kept(small_vgg, tiny_resnet):
    # the adaptive pool after the features (4 x 4 -> 2 x 2 here) is never chosen
    assert find_target_layer(small_vgg, (64, 64)) == "features"
    tiny_resnet.train()
    stats = tiny_resnet.stem[1].running_mean.clone()
    assert find_target_layer(tiny_resnet, (64, 64)) == "layer2"
    assert tiny_resnet.training and all(m.training for m in tiny_resnet.modules())
    assert torch.equal(tiny_resnet.stem[1].running_mean, stats)


def test_module_reused_at_the_end_is_found():
    class SharedActivation(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.head = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
            self.act = nn.ReLU6()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = self.act(self.head(self.act(self.stem(x))))
            return self.fc(x.mean(dim=(2, 3)))

    assert find_target_layer(SharedActivation(), (16, 16)) == "act"


def test_no_spatial_layer_raises():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    with pytest.raises(ConfigError, match=r"Sequential.*pass the CAM layer explicitly as `layer`$"):
        find_target_layer(model, (8, 8))


def test_validate_layer(tiny_resnet):
    assert validate_layer(tiny_resnet, "layer2.bn1") is tiny_resnet.layer2.bn1
    with pytest.raises(ConfigError, match="layer1, layer2") as info:
        validate_layer(tiny_resnet, "layer3")
    assert "TinyResNet" in str(info.value)
    with pytest.raises(ConfigError, match="top-level names: stem, layer1"):
        validate_layer(tiny_resnet, "zzzzzz")
