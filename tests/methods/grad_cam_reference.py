"""pytorch-grad-cam as an independent reference for the CAM tests (test-only dependency)."""

import numpy as np
import torch
import torch.nn.functional as F

from xaibench.methods.cam import GradCAMPlusPlus, layer_forward, weighted_cam
from xaibench.methods.cam_perturbation import ScoreCAM


def peer_maps(peer_cls, model, layer, images, targets):
    """pytorch-grad-cam's maps (B, H, W): ReLU, resized to the input, min-max normalised."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with peer_cls(model, target_layers=[model.get_submodule(layer)]) as reference:
        return reference(images, targets=[ClassifierOutputTarget(int(t)) for t in targets])


def correlations(maps, expected):
    """Per-image Pearson r of our maps (B, h, w), normalised and resized as the peer does."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    ours = scale_cam_image(maps.numpy(), expected.shape[1:][::-1])
    return [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(ours, expected, strict=True)]


class PeerDefinitionScoreCAM(ScoreCAM):
    """Score-CAM as pytorch-grad-cam defines it (test-only): masks resized with align_corners=True
    and a 1e-8 in the normalisation, channel score = the target logit, and the channel weights a
    softmax of those logits over the channels in float32 (the peer gathers the scores into a
    float32 tensor whatever the model's dtype)."""

    def masks(self, maps, size):
        masks = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=True)
        low = masks.amin(dim=(2, 3), keepdim=True)
        return (masks - low) / (masks.amax(dim=(2, 3), keepdim=True) - low + 1e-8)

    def score(self, logits, targets):
        return logits.gather(1, targets[:, None])[:, 0]

    def peer_maps(self, images):
        result = layer_forward(self.model, self.layer, images, None, self.layout)
        scores = self.channel_scores(images, result.activations, result.targets)
        flat = result.activations.flatten(2)
        varies = flat.amax(dim=2) > flat.amin(dim=2)
        weights = torch.where(varies, scores, -torch.inf).float().softmax(dim=1)
        return weighted_cam(weights.to(flat.dtype), result.activations), result.targets


class PeerDefinitionGradCAMPlusPlus(GradCAMPlusPlus):
    """Grad-CAM++ as pytorch-grad-cam defines it (test-only): 1e-6 added to alpha's denominator,
    alpha 0 where the gradient is 0. The 1e-6 matters where gradients are small, as they are on
    a random transformer's normalised tokens."""

    def channel_weights(self, activations, gradients):
        squared = gradients.square()
        total = activations.sum(dim=(2, 3), keepdim=True)
        alpha = squared / (2 * squared + total * squared * gradients + 1e-6)
        alpha = torch.where(gradients != 0, alpha, 0.0)
        return (alpha * torch.relu(gradients)).sum(dim=(2, 3))
