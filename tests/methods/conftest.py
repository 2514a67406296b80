"""Small networks for the saliency-method tests (random weights, fast at 64 x 64 on 2 cores)."""

from collections.abc import Callable

import pytest
import torch
import torchvision
from model_helpers import hooks_left, randomise, set_inplace
from torch import nn
from torchvision.models.vgg import make_layers

SMALL_VGG_CFG = [8, "M", 16, "M", 32, 32, "M", 32, 32, "M"]


class SmallVGG(nn.Module):
    """torchvision's VGG feature stack (Conv2d with bias, ReLU(inplace=True), max-pool), small head.

    (B, 3, H, W) -> (B, 10). `fail = True` makes the forward raise after the features have run.
    """

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = make_layers(SMALL_VGG_CFG)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(32 * 4, 32), nn.ReLU(inplace=True), nn.Linear(32, num_classes)
        )
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        if self.fail:
            raise RuntimeError("forced failure after the features")
        return self.classifier(torch.flatten(x, 1))


class Block(nn.Module):
    """A ResNet basic block: BN before an in-place residual addition, one ReLU module used twice."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        out += x
        return self.relu(out)


class TinyResNet(nn.Module):
    """Stem (Conv2d with bias + BN), two residual blocks, a strided conv, global pool, linear."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.layer1 = Block(8)
        self.down = nn.Sequential(
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        self.layer2 = Block(16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.layer2(self.down(self.layer1(self.stem(x)))))
        if self.fail:
            raise RuntimeError("forced failure after the features")
        return self.fc(torch.flatten(x, 1))


@pytest.fixture(name="randomise")
def randomise_fixture() -> Callable[..., nn.Module]:
    return randomise


@pytest.fixture(name="set_inplace")
def set_inplace_fixture() -> Callable[[nn.Module, bool], nn.Module]:
    return set_inplace


@pytest.fixture
def make_vgg() -> Callable[..., SmallVGG]:
    def make(inplace: bool = True, seed: int = 0) -> SmallVGG:
        torch.manual_seed(seed)
        return set_inplace(randomise(SmallVGG(), seed), inplace).eval()

    return make


@pytest.fixture
def small_vgg(make_vgg) -> SmallVGG:
    return make_vgg()


@pytest.fixture
def tiny_resnet() -> TinyResNet:
    torch.manual_seed(1)
    return randomise(TinyResNet(), 1).eval()


@pytest.fixture
def images() -> torch.Tensor:
    """(4, 3, 64, 64) normal noise, seeded."""
    return torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def no_hooks_left() -> Callable[[nn.Module], None]:
    def check(model: nn.Module) -> None:
        assert hooks_left(model) == []

    return check


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


@pytest.fixture(params=["small_vgg", "tiny_resnet"])
def model(request):
    return request.getfixturevalue(request.param)
