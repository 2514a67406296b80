"""Tiny vision transformers for the token-grid and attention tests (random weights, 32 x 32 inputs).

torchvision's ViT and Swin are always available; timm's ViT, DeiT (distilled: a class and a
distillation token) and Swin are built when timm is installed, with `pretrained=False`;
transformers' ViT when transformers is.
"""

import pytest
import torch
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

from xaibench.models.factory import mark_input_size, returning_logits

SIDE = 32
"""Input side of every tiny transformer: an 8 x 8 patch grid at patch 4, 4 x 4 at patch 8."""


def torchvision_vit(seed: int = 0, image_size: int = SIDE) -> VisionTransformer:
    """Patch 8 (a 4 x 4 grid and a class token), 2 layers, width 32, 2 heads, 10 classes; the head
    drawn at random (torchvision starts it at 0, which makes every gradient 0)."""
    torch.manual_seed(seed)
    model = VisionTransformer(
        image_size=image_size, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
        mlp_dim=64, num_classes=10,
    )  # fmt: skip
    with torch.no_grad():
        model.heads.head.weight.normal_(0, 0.5)
        model.heads.head.bias.normal_(0, 0.1)
    return mark_input_size(model.eval(), (image_size, image_size))


def torchvision_swin(seed: int = 0) -> SwinTransformer:
    """Patch 4 (an 8 x 8 grid), windows of 4 x 4, two stages of width 16 and 32, 10 classes."""
    torch.manual_seed(seed)
    model = SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[1, 2], window_size=[4, 4],
        num_classes=10,
    )  # fmt: skip
    return mark_input_size(model.eval(), (SIDE, SIDE))


def timm_model(kind: str, seed: int = 0, **kwargs) -> nn.Module:
    """timm's "vit" (class token), "deit" (class and distillation tokens) or "swin" (channels
    last), tiny, at SIDE; skips the test without timm."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(seed)
    if kind == "swin":
        model = timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, img_size=SIDE, patch_size=4,
            window_size=4, embed_dim=16, depths=(2, 2), num_heads=(1, 2), num_classes=10,
        )  # fmt: skip
    else:
        name = {"vit": "vit_tiny_patch16_224", "deit": "deit_tiny_distilled_patch16_224"}[kind]
        model = timm.create_model(
            name, pretrained=False, img_size=SIDE, patch_size=8, embed_dim=32, depth=2,
            num_heads=2, num_classes=10, **kwargs,
        )  # fmt: skip
    return mark_input_size(model.eval(), (SIDE, SIDE))


def transformers_vit(seed: int = 0) -> nn.Module:
    """transformers' ViTForImageClassification, patch 8 at SIDE (a 4 x 4 grid and a class token),
    2 layers, width 32, 2 heads, 10 classes, returning its logits (`returning_logits`); skips the
    test without transformers."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        image_size=SIDE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10,
    )  # fmt: skip
    model = transformers.ViTForImageClassification(config)
    return mark_input_size(returning_logits(model).eval(), (SIDE, SIDE))


class FailingViT(nn.Module):
    """timm's tiny ViT at any input size (`dynamic_img_size`, padded to whole patches):
    (B, 3, H, W) -> (B, 10). `fail = True` makes the forward raise after the transformer has
    run, as the CNNs of conftest.py do."""

    def __init__(self):
        super().__init__()
        self.net = timm_model("vit", seed=3, dynamic_img_size=True, dynamic_img_pad=True)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net.forward_features(x)
        if self.fail:
            raise RuntimeError("forced failure after the features")
        return self.net.forward_head(features)


def tokens_to_map(prefix: int, grid: tuple[int, int]):
    """A pytorch-grad-cam `reshape_transform` for ViT tokens (B, prefix + h*w, C): the first
    `prefix` tokens dropped, the rest on the grid, channels first."""

    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        b, _, c = tensor.shape
        return tensor[:, prefix:].reshape(b, *grid, c).permute(0, 3, 1, 2)

    return reshape


def channels_first(tensor: torch.Tensor) -> torch.Tensor:
    """A pytorch-grad-cam `reshape_transform` for a (B, h, w, C) grid."""
    return tensor.permute(0, 3, 1, 2)
