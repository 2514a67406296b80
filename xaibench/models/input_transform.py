"""Per-channel affine maps a model applies to its input inside `forward`, recognised by structure.

torchvision's GoogLeNet and Inception3 built with pretrained weights have `transform_input=True`:
their `forward` first maps each channel as x'_c = s_c * x_c + t_c (`_transform_input`: their
weights were trained on inputs normalised with mean and std 0.5, the stores hold inputs
normalised with ImageNet's), so s_c = std_c / 0.5 and t_c = (mean_c - 0.5) / 0.5. The shift t
is the bias of no layer; T-Grad and FullGrad add its term, t_c * dy/dx'_c = (t_c / s_c) * dy/dx_c,
to their bias terms (`xaibench.methods.tgrad.input_terms`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torchvision.models import GoogLeNet, Inception3

SHIFTING_MODELS = (GoogLeNet, Inception3)
"""torchvision classes whose `forward` applies `_transform_input` when `transform_input` is set."""


def input_shift(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scale (C,), shift (C,)) float64 of the input transform x' = scale * x + shift, or None.

    None unless `model` is an instance of a `SHIFTING_MODELS` class (subclasses included) with
    `transform_input` set; never decided by the model's name. The constants are read off
    torchvision's own `_transform_input`, evaluated on a float64 image of zeros (the shift) and one
    of ones (scale + shift) on the CPU, so the model's device (meta included) does not matter.
    """
    if not isinstance(model, SHIFTING_MODELS) or not model.transform_input:
        return None
    probe = torch.stack([torch.zeros(3), torch.ones(3)]).to(torch.float64)[:, :, None, None]
    with torch.no_grad():
        at_zero, at_one = model._transform_input(probe)[:, :, 0, 0]
    return at_one - at_zero, at_zero


@contextmanager
def without_input_transform(model: nn.Module) -> Iterator[nn.Module]:
    """For the block, `model` skips its input transform (`input_shift`), if it has one.

    For tracing the layers after it: the transform is accounted for separately, by the input
    term (the scale) and the input-shift term (the shift). `transform_input` is restored after.
    """
    if input_shift(model) is None:
        yield model
        return
    model.transform_input = False
    try:
        yield model
    finally:
        model.transform_input = True
