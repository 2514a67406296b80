"""Helpers for the method tests that need them outside fixtures (module-scoped models)."""

import torch
from torch import nn


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random non-zero biases and batch-norm statistics, so that every T-Grad term is exercised."""
    gen = torch.Generator().manual_seed(seed)

    def uniform_(tensor: torch.Tensor, low: float, high: float) -> None:
        tensor.copy_(torch.rand(tensor.shape, generator=gen) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
                uniform_(module.bias, -0.1, 0.1)
            if isinstance(module, nn.BatchNorm2d):
                uniform_(module.running_mean, -0.2, 0.2)
                uniform_(module.running_var, 0.5, 1.5)
                uniform_(module.weight, 0.5, 1.5)
                uniform_(module.bias, -0.2, 0.2)
    return model


def calibrated(model: nn.Module, side: int, seed: int) -> nn.Module:
    """Random biases, then batch-norm statistics measured on noise and perturbed; eval mode.

    Measured statistics keep the activations of deep random networks alive (with arbitrary ones
    the output of a deep network is often constant); the perturbation (variance x U(0.5, 1.5),
    mean + U(-0.2, 0.2) standard deviations) keeps every batch-norm bias term non-zero.
    """
    gen = torch.Generator().manual_seed(seed)
    randomise(model, seed)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the calibration batch
    with torch.no_grad():
        model.train()(torch.randn(4, 3, side, side, generator=gen))
        for norm in norms:
            norm.running_var.mul_(torch.rand(norm.running_var.shape, generator=gen) + 0.5)
            shift = (torch.rand(norm.running_mean.shape, generator=gen) - 0.5) * 0.4
            norm.running_mean.add_(shift * norm.running_var.sqrt())
    return model.eval()


def set_inplace(model: nn.Module, inplace: bool) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = inplace
    return model


HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def hooks_left(model: nn.Module) -> list[str]:
    """'module name: hook dict' for every hook still registered on the model, plus global ones."""
    left = [
        f"{name or '<root>'}: {attr}"
        for name, module in model.named_modules()
        for attr in HOOK_DICTS
        if getattr(module, attr)
    ]
    globals_ = nn.modules.module
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        if getattr(globals_, attr):
            left.append(f"global: {attr}")
    return left
