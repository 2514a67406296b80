"""Small models importable as `tiny_models:NAME` (tests/ is on sys.path under pytest)."""

import time

import torch
from torch import nn


def tiny_cnn() -> nn.Module:
    """Conv-BN-ReLU-pool twice and a 1000-way linear head: fast at 224 x 224, random weights."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 5, stride=4, padding=2),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 1000),
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
            if isinstance(module, nn.Conv2d):
                module.bias.uniform_(-0.1, 0.1)
    return model.eval()


def slow_tiny_cnn() -> nn.Module:
    """`tiny_cnn` (same weights, same outputs) that sleeps 0.1 s per forward pass, so that a test can
    stop a run while it is under way."""
    model = tiny_cnn()
    model.register_forward_pre_hook(lambda module, args: time.sleep(0.1))
    return model


def tiny_cnn_dropout() -> nn.Module:
    """`tiny_cnn` with nn.Dropout(0.5) before its linear head (for MC dropout)."""
    *features, head = tiny_cnn()
    return nn.Sequential(*features, nn.Dropout(0.5), head).eval()


class FitsOnly(nn.Module):
    """`net`, but a forward of more than `limit` images raises torch.OutOfMemoryError, as a
    device whose memory holds only `limit` images would."""

    def __init__(self, net: nn.Module, limit: int):
        super().__init__()
        self.net, self.limit = net, limit

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"cannot fit {images.shape[0]} images (simulated)")
        return self.net(images)
