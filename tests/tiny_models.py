"""Small models importable as `tiny_models:NAME` (tests/ is on sys.path under pytest)."""

import os
import socket

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


GATE = "TINY_MODELS_GATE"
GATE_NO_GRAD = "TINY_MODELS_GATE_NO_GRAD"


def gated_tiny_cnn() -> nn.Module:
    """`tiny_cnn` (same weights, same outputs) that a test can stop while a run is under way.

    With the environment variable `TINY_MODELS_GATE` set to HOST:PORT, the first forward pass of the
    second image the process explains connects there, sends the process id and a newline, and waits
    until the connection closes: the rows of the first image are written or queued, the others not.
    Without it, a plain `tiny_cnn`. Images are told apart by their pixels (the all-zero inputs that
    trace the model are not images). With `TINY_MODELS_GATE_NO_GRAD=1` only the inputs of forwards
    without autograd count (an evaluation's, not a gradient method's)."""
    model = tiny_cnn()
    gate = os.environ.get(GATE)
    if not gate:
        return model
    host, port = gate.rsplit(":", 1)
    no_grad_only = os.environ.get(GATE_NO_GRAD) == "1"
    seen: list[torch.Tensor] = []

    def wait_at_the_second_image(module, args):
        images = args[0].detach()
        if no_grad_only and torch.is_grad_enabled():
            return
        if not images.any() or any(torch.equal(images, image) for image in seen):
            return
        seen.append(images.clone())
        if len(seen) == 2:
            with socket.create_connection((host, int(port))) as connection:
                connection.sendall(f"{os.getpid()}\n".encode())
                while connection.recv(1):  # until the test closes it, or this process is stopped
                    pass

    model.register_forward_pre_hook(wait_at_the_second_image)
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


def tiny_vit() -> nn.Module:
    """torchvision's VisionTransformer at 224 x 224 with 32 x 32 patches (a 7 x 7 grid), two
    layers of width 32 and a 1000-way head; random weights, the head's included (torchvision
    starts it at 0, which makes every gradient 0)."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=224, patch_size=32, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.5)
    return model.eval()
