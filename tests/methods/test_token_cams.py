"""The CAM family on vision transformers' token grids: pytorch-grad-cam with its
`reshape_transform` on the same layer, the default layers, batch invariance, `--layer`."""

import copy

import pytest
import torch
from grad_cam_reference import PeerDefinitionGradCAMPlusPlus, PeerDefinitionScoreCAM
from vit_helpers import (
    SIDE,
    FailingViT,
    channels_first,
    timm_model,
    tokens_to_map,
    torchvision_swin,
    torchvision_vit,
    transformers_vit,
)

from xaibench.core.errors import ConfigError
from xaibench.methods import METHODS
from xaibench.methods.cam import (
    EigenCAM,
    GradCAM,
    HiResCAM,
    LayerCAM,
    XGradCAM,
    explain_together,
    layer_forward,
)
from xaibench.methods.cam_perturbation import AblationCAM
from xaibench.methods.layers import find_target_layer, resolve_layer
from xaibench.methods.tokens import Layout

PEERS = {
    GradCAM: "GradCAM",
    PeerDefinitionGradCAMPlusPlus: "GradCAMPlusPlus",
    XGradCAM: "XGradCAM",
    LayerCAM: "LayerCAM",
    HiResCAM: "HiResCAM",
}
MODELS = {
    # name: (builder, default layer, layout kind, the peer's reshape_transform)
    "torchvision_vit": (
        torchvision_vit, "encoder.layers.encoder_layer_1.ln_1", "tokens", tokens_to_map(1, (4, 4))
    ),
    "torchvision_swin": (torchvision_swin, "permute", "map", None),
    "timm_vit": (lambda: timm_model("vit"), "blocks.1.norm1", "tokens", tokens_to_map(1, (4, 4))),
    "timm_deit": (
        lambda: timm_model("deit"), "blocks.1.norm1", "tokens", tokens_to_map(2, (4, 4))
    ),
    "timm_swin": (lambda: timm_model("swin"), "norm", "channels_last", channels_first),
    "transformers_vit": (
        transformers_vit, "vit.layers.1.layernorm_before", "tokens", tokens_to_map(1, (4, 4))
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(MODELS))
def transformer(request):
    build, layer, kind, reshape = MODELS[request.param]
    return build(), layer, kind, reshape


@pytest.fixture(scope="module")
def photos():
    """(3, 3, 32, 32) seeded noise."""
    return torch.randn(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))


def peer_raw_maps(peer_cls, model, layer, reshape, images, targets, monkeypatch):
    """pytorch-grad-cam's maps at the layer's resolution (B, h, w): its ReLU'd CAM before the
    resize and min-max normalisation (`scale_cam_image`, made the identity)."""
    import pytorch_grad_cam.base_cam as base_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    monkeypatch.setattr(base_cam, "scale_cam_image", lambda cam, target_size=None: cam)
    target_layers = [model.get_submodule(layer)]
    with peer_cls(model, target_layers=target_layers, reshape_transform=reshape) as peer:
        maps = peer(images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    return torch.from_numpy(maps)


def test_default_layer_and_layout(transformer):
    model, layer, kind, _ = transformer
    assert find_target_layer(model) == layer
    assert resolve_layer(model)[1].kind == kind


@pytest.mark.parametrize("method_cls", list(PEERS))
def test_gradient_cams_equal_pytorch_grad_cam(method_cls, transformer, photos, monkeypatch):
    # Grad-CAM++ as the peer defines it, with its 1e-6 (grad_cam_reference); the others as is
    pytest.importorskip("pytorch_grad_cam")
    import pytorch_grad_cam as pgc

    model, layer, _, reshape = transformer
    result = method_cls(model)(photos)
    assert result.maps.shape == (3, 4, 4) and result.maps.amax() > 0
    peer = getattr(pgc, PEERS[method_cls])
    expected = peer_raw_maps(peer, model, layer, reshape, photos, result.targets, monkeypatch)
    scale = expected.abs().amax()
    torch.testing.assert_close(result.maps, expected, rtol=1e-4, atol=1e-5 * scale)


def test_eigencam_equals_pytorch_grad_cam_up_to_sign(transformer, photos, monkeypatch):
    # the peer keeps the SVD's sign: its map is ReLU(p) or ReLU(-p) for our projection p;
    # EigenCAM.cam(-A) is ReLU(-p)
    pytest.importorskip("pytorch_grad_cam")
    import pytorch_grad_cam as pgc

    model, layer, _, reshape = transformer
    method = EigenCAM(model)
    result = method(photos)
    expected = peer_raw_maps(
        pgc.EigenCAM, model, layer, reshape, photos, result.targets, monkeypatch
    )
    activations = layer_forward(model, layer, photos, None, method.layout).activations
    flipped = method.cam(-activations, None)
    for ours, other, peer in zip(result.maps, flipped, expected, strict=True):
        scale = peer.abs().amax()
        assert any(
            torch.allclose(candidate, peer, rtol=1e-4, atol=1e-5 * scale)
            for candidate in (ours, other)
        )


def test_scorecam_equals_pytorch_grad_cam_as_it_defines_it(transformer, photos, monkeypatch):
    # pytorch-grad-cam weights the channels by a softmax of the masked logits (ScoreCAM's docstring);
    # the same definition run through xaibench's token grid gives its maps. In float64: the maps
    # are small sums of large terms, so float32 rounding alone nears the tolerance.
    pytest.importorskip("pytorch_grad_cam")
    import pytorch_grad_cam as pgc

    model, layer, _, reshape = transformer
    model, photos = copy.deepcopy(model).double(), photos.double()
    ours, targets = PeerDefinitionScoreCAM(model, channel_batch=16).peer_maps(photos)
    expected = peer_raw_maps(pgc.ScoreCAM, model, layer, reshape, photos, targets, monkeypatch)
    expected = expected.to(ours.dtype)  # the maps are float32 (weighted_cam)
    scale = expected.abs().amax()
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5 * scale)


def test_scorecam_and_ablationcam_run_on_the_grid(transformer, photos):
    model, *_ = transformer
    for name in ("scorecam", "ablationcam"):
        maps = METHODS.get(name)(model, channel_batch=40)(photos).maps
        assert maps.shape == (3, 4, 4) and torch.isfinite(maps).all()


def test_ablation_keeps_the_class_token_and_zeroes_one_channel_of_the_patches():
    model = torchvision_vit()
    method = AblationCAM(model)
    tokens = torch.randn(2, 17, 32)
    maps = method.layout.to_map(tokens, (4, 4))
    assert torch.equal(maps[:, :, 1, 2], tokens[:, 1 + 6])
    ablated = maps.clone()
    ablated[:, 5] = 0
    back = method.layout.to_output(ablated, tokens)
    assert torch.equal(back[:, 0], tokens[:, 0])
    assert torch.equal(back[:, 1:, 5], torch.zeros(2, 16))
    assert torch.equal(back[:, 1:, :5], tokens[:, 1:, :5])


@pytest.mark.parametrize("size", [(32, 32), (40, 56)])
@pytest.mark.parametrize("name", ["gradcam", "gradcampp", "layercam", "eigencam", "scorecam"])
def test_batch_invariant_at_any_size_the_model_takes(name, size):
    model = FailingViT()
    images = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(1))
    method = METHODS.get(name)(model, **({"channel_batch": 64} if name == "scorecam" else {}))
    assert method.layer == "net.blocks.1.norm1"
    together = method(images)
    assert together.maps.shape == (3, size[0] // 8, size[1] // 8)
    for i in range(len(images)):
        alone = method(images[i : i + 1], together.targets[i : i + 1])
        scale = together.maps[i].abs().max()
        torch.testing.assert_close(alone.maps[0], together.maps[i], rtol=1e-5, atol=1e-5 * scale)


def test_a_given_layer_overrides_the_default_and_is_read_on_the_grid(photos):
    model = torchvision_vit()
    method = GradCAM(model, layer="encoder.layers.encoder_layer_0")
    assert method.layout == Layout("tokens", "conv_proj")
    assert method(photos).maps.shape == (3, 4, 4)
    assert GradCAM(model, layer="encoder.layers.encoder_layer_0.mlp.0")(photos).maps.shape == (
        3,
        4,
        4,
    )  # the MLP's hidden tokens, 64 channels
    with pytest.raises(ConfigError, match=r"'heads' outputs shape \(1, 10\), not a \(B, C, h, w\)"):
        GradCAM(model, layer="heads")
    with pytest.raises(ConfigError, match="does not output a tensor"):
        GradCAM(model, layer="encoder.layers.encoder_layer_0.self_attention")


def test_cams_share_one_pass_on_the_grid(photos):
    model = torchvision_vit()
    methods = [cls(model) for cls in (GradCAM, XGradCAM, LayerCAM)]
    for together, method in zip(explain_together(methods, photos), methods, strict=True):
        torch.testing.assert_close(together.maps, method(photos).maps)


def test_registered_transformers_get_their_default_layers():
    from xaibench.methods.support import skeleton

    assert resolve_layer(skeleton("vit_b_16")) == (
        "encoder.layers.encoder_layer_11.ln_1",
        Layout("tokens", "conv_proj"),
    )
    assert resolve_layer(skeleton("swin_t")) == ("permute", Layout("map"))
    assert resolve_layer(skeleton("swin_t"), "norm") == ("norm", Layout("channels_last"))


def test_a_transformer_whose_last_stage_is_off_the_patch_grid_has_no_default_layer():
    # transformers' Swin merges patches into ever shorter sequences (8 x 8 -> 16 tokens here): no
    # layer of its last stage lays out on the patch grid, so none is guessed (not stage 0's)
    transformers = pytest.importorskip("transformers")
    config = transformers.SwinConfig(
        image_size=SIDE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2],
        window_size=4, num_labels=10,
    )  # fmt: skip
    model = transformers.SwinForImageClassification(config).eval()
    with pytest.raises(ConfigError, match="no feature map the class score is pooled from"):
        find_target_layer(model, (SIDE, SIDE))
