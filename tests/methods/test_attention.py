"""Attention rollout and gradient-weighted attention against one-image references written from the
papers (plain loops over layers, attention computed explicitly), batch invariance, settings."""

import pytest
import torch
from torch import nn
from vit_helpers import SIDE, timm_model, torchvision_swin, torchvision_vit, transformers_vit

from xaibench.core.errors import ConfigError
from xaibench.methods import METHODS
from xaibench.methods.attention import (
    AttentionGradient,
    AttentionRollout,
    attention_grid,
    attention_probabilities,
)


@pytest.fixture(scope="module")
def photos():
    """(3, 3, 32, 32) seeded noise."""
    return torch.randn(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))


def explicit_attention(x, weight, bias, heads):
    """Self-attention of one image's tokens x (N, C): the probabilities (heads, N, N), head by
    head, and the heads' outputs concatenated (N, C), before the output projection."""
    c = x.shape[1]
    d = c // heads
    q, k, v = (x @ weight.T + bias).split(c, dim=1)
    parts = [slice(h * d, (h + 1) * d) for h in range(heads)]
    probs = torch.stack([(q[:, p] @ k[:, p].T / d**0.5).softmax(dim=1) for p in parts])
    return probs, torch.cat([probs[h] @ v[:, p] for h, p in enumerate(parts)], dim=1)


def torchvision_forward(model, image):
    """torchvision ViT on one image (3, H, W) by hand: logits (K,), each layer's probabilities
    (heads, N, N) with their gradients kept (`retain_grad`), one class token."""
    x = model.conv_proj(image[None]).flatten(2).transpose(1, 2)[0]
    x = torch.cat([model.class_token[0], x]) + model.encoder.pos_embedding[0]
    probs = []
    for layer in model.encoder.layers:
        attention = layer.self_attention
        a, mixed = explicit_attention(
            layer.ln_1(x), attention.in_proj_weight, attention.in_proj_bias, attention.num_heads
        )
        if a.requires_grad:
            a.retain_grad()
        probs.append(a)
        x = x + attention.out_proj(mixed)
        x = x + layer.mlp(layer.ln_2(x))
    return model.heads(model.encoder.ln(x)[0]), probs


def timm_forward(model, image):
    """timm ViT or DeiT on one image by hand, as `torchvision_forward`."""
    x = model._pos_embed(model.patch_embed(image[None]))[0]
    probs = []
    for block in model.blocks:
        attention = block.attn
        qkv = attention.qkv
        a, mixed = explicit_attention(block.norm1(x), qkv.weight, qkv.bias, attention.num_heads)
        if a.requires_grad:
            a.retain_grad()
        probs.append(a)
        x = x + attention.proj(mixed)
        x = x + block.mlp(block.norm2(x))
    return model.forward_head(model.norm(x)[None])[0], probs


def transformers_forward(model, image):
    """transformers' ViT on one image by hand, as `torchvision_forward`."""
    x = model.vit.embeddings(image[None])[0]
    probs = []
    for layer in model.vit.layers:
        attention = layer.attention
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        weight = torch.cat([p.weight for p in projections])
        bias = torch.cat([p.bias for p in projections])
        heads = model.config.num_attention_heads
        a, mixed = explicit_attention(layer.layernorm_before(x), weight, bias, heads)
        if a.requires_grad:
            a.retain_grad()
        probs.append(a)
        x = x + attention.o_proj(mixed)
        x = x + layer.mlp(layer.layernorm_after(x))
    return model.classifier(model.vit.layernorm(x)[0]), probs


def reference_rollout(probs, prefix, grid, fusion="mean", discard=0.0):
    """Abnar and Zuidema (2020) for one image: per layer, heads fused, the smallest `discard`
    fraction of entries zeroed one by one, 0.5 A + 0.5 I with rows renormalised; the product
    from the first layer up; the class token's row over the patches."""
    n = probs[0].shape[-1]
    rollout = torch.eye(n, dtype=torch.float64)
    for a in probs:
        a = a.detach().double()
        fused = {"mean": a.mean(0), "max": a.max(0).values, "min": a.min(0).values}[fusion]
        order = fused.flatten().argsort()
        flat = fused.flatten().clone()
        for index in order[: int(discard * n * n)]:
            flat[index] = 0
        step = 0.5 * flat.view(n, n) + 0.5 * torch.eye(n, dtype=torch.float64)
        step = step / step.sum(dim=1, keepdim=True)
        rollout = step @ rollout
    return rollout[0, prefix:].view(grid)


def reference_chefer(probs, prefix, grid):
    """Chefer, Gur and Wolf (2021), eq. 5-6, for one image: R = I; per layer from the first,
    R = R + mean_h((grad A * A)^+) R; the class token's row over the patches."""
    n = probs[0].shape[-1]
    relevance = torch.eye(n, dtype=torch.float64)
    for a in probs:
        weighted = (a.grad.double() * a.detach().double()).clamp(min=0).mean(0)
        relevance = relevance + weighted @ relevance
    return relevance[0, prefix:].view(grid)


VITS = {
    "torchvision_vit": (torchvision_vit, torchvision_forward, 1),
    "timm_vit": (lambda: timm_model("vit"), timm_forward, 1),
    "timm_deit": (lambda: timm_model("deit"), timm_forward, 2),
    "transformers_vit": (transformers_vit, transformers_forward, 1),
}


@pytest.fixture(scope="module", params=list(VITS))
def vit(request):
    build, forward, prefix = VITS[request.param]
    return build(), forward, prefix


@pytest.mark.parametrize(
    ("fusion", "discard"), [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.3)]
)
def test_rollout_equals_the_paper_image_by_image(vit, photos, fusion, discard):
    model, forward, prefix = vit
    result = AttentionRollout(model, head_fusion=fusion, discard_ratio=discard)(photos)
    assert result.maps.shape == (3, 4, 4) and result.maps.dtype == torch.float32
    for image, ours in zip(photos, result.maps, strict=True):
        with torch.no_grad():
            _, probs = forward(model, image)
        expected = reference_rollout(probs, prefix, (4, 4), fusion, discard)
        torch.testing.assert_close(ours.double(), expected, rtol=1e-4, atol=1e-6)


def test_gradient_weighted_attention_equals_the_paper_image_by_image(vit, photos):
    model, forward, prefix = vit
    targets = torch.tensor([0, 3, 7])
    result = AttentionGradient(model)(photos, targets)
    assert result.maps.amax() > 0
    for image, target, ours in zip(photos, targets, result.maps, strict=True):
        logits, probs = forward(model, image)
        logits[target].backward()
        expected = reference_chefer(probs, prefix, (4, 4))
        torch.testing.assert_close(ours.double(), expected, rtol=1e-4, atol=1e-6)


def test_the_explicit_attention_changes_nothing_else(vit, photos):
    model, _, prefix = vit
    with torch.no_grad():
        plain = model(photos)
        with attention_probabilities(model) as probs:
            explicit = model(photos)
    torch.testing.assert_close(explicit, plain, rtol=1e-5, atol=1e-5)
    assert [a.shape for a in probs] == [(3, 2, prefix + 16, prefix + 16)] * 2
    assert all(torch.allclose(a.sum(-1), torch.ones(())) for a in probs)


@pytest.mark.parametrize("cls", [AttentionRollout, AttentionGradient])
def test_batch_invariant(cls, vit, photos):
    model, *_ = vit
    method = cls(model)
    together = method(photos)
    for i in range(len(photos)):
        alone = method(photos[i : i + 1], together.targets[i : i + 1])
        torch.testing.assert_close(alone.maps[0], together.maps[i], rtol=1e-5, atol=1e-7)


def test_rollout_is_class_agnostic_gradients_are_not(photos):
    model = torchvision_vit()
    top1 = AttentionRollout(model)(photos)
    other = AttentionRollout(model)(photos, (top1.targets + 1) % 10)
    assert torch.equal(other.maps, top1.maps)
    weighted = [AttentionGradient(model)(photos, torch.full((3,), t)).maps for t in (0, 1)]
    assert not torch.allclose(weighted[0], weighted[1])


def test_model_restored_also_after_an_exception(photos, no_hooks_left):
    model = timm_model("vit")
    fused = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    vision = torchvision_vit()

    class Stop(Exception):
        pass

    for net in (model, vision):
        with pytest.raises(Stop), attention_probabilities(net):
            raise Stop
        AttentionGradient(net)(photos)
        no_hooks_left(net)
        assert all("forward" not in m.__dict__ for m in net.modules())
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == fused


def test_transformers_attention_implementation_is_restored(photos, no_hooks_left):
    model = transformers_vit()
    model.config._attn_implementation = "sdpa"

    class Stop(Exception):
        pass

    with pytest.raises(Stop), attention_probabilities(model) as captured:
        model(photos)
        assert model.config._attn_implementation == "eager"
        assert len(captured) == 2 and captured[0].shape == (3, 2, 17, 17)
        raise Stop
    assert model.config._attn_implementation == "sdpa"
    no_hooks_left(model)


def test_models_without_attention_over_a_class_token_are_refused(tiny_resnet):
    with pytest.raises(ConfigError, match="no attention module"):
        AttentionRollout(tiny_resnet)
    with pytest.raises(ConfigError, match="no attention module"):
        AttentionGradient(torchvision_swin())
    with pytest.raises(ConfigError, match=r"over 16 tokens, not over a class token and the 8x8"):
        AttentionRollout(timm_model("swin"))
    average_pooled = timm_model("vit", class_token=False, global_pool="avg")
    with pytest.raises(ConfigError, match=r"over 16 tokens, not over a class token"):
        attention_grid(average_pooled)


def test_settings_are_checked_and_recorded():
    model = torchvision_vit()
    method = METHODS.get("rollout")(model, head_fusion="max", discard_ratio=0.5)
    assert method.params == {"head_fusion": "max", "discard_ratio": 0.5}
    assert METHODS.get("attn_grad")(model).params == {}
    with pytest.raises(ConfigError, match="head_fusion must be one of mean, max, min"):
        AttentionRollout(model, head_fusion="median")
    for ratio in (1.0, -0.1, True, "0.2"):
        with pytest.raises(ConfigError, match=r"discard_ratio must be in \[0, 1\)"):
            AttentionRollout(model, discard_ratio=ratio)


def test_masked_multi_head_attention_is_refused():
    attention = nn.MultiheadAttention(8, 2, batch_first=True)
    x = torch.randn(1, 5, 8)
    with attention_probabilities(attention), pytest.raises(ConfigError, match="without masks"):
        attention(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.bool))
