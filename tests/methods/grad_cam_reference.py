"""pytorch-grad-cam as an independent reference for the CAM tests (test-only dependency)."""

import numpy as np


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
