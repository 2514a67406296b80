"""Numeric precision and compilation of the model's forward, applied in one place for a run.

`precision`:
- fp32: IEEE float32 everywhere (the default, and what every store before this option holds). On
  CUDA this also turns off the TF32 convolutions PyTorch enables by default.
- tf32: float32 tensors, TensorFloat-32 matmuls and convolutions on CUDA (Ampere and newer). On a CPU
  there is no TF32, so it computes exactly as fp32.
- bf16: the model's forward under `torch.autocast` with bfloat16, on CPU and CUDA.
- fp16: the forward under autocast with float16, CUDA only: refused on a CPU, where float16 kernels
  are emulated and slower than fp32, with a hint to use bf16.

Only the model's forward runs under autocast (`forward_settings` swaps the module's `forward` for
the duration of a run). Its outputs come back as float32, and everything a method or metric
computes from them (backward aside, which follows the forward's dtypes) runs outside autocast, so
CAM weights, T-Grad's bias terms, resizing, sorting and AUCs stay float32 arithmetic. Methods cast
the activations and gradients they read from hooks to float32 before using them.

`compile`: the forward is also wrapped in `torch.compile`. A forward hook on any submodule
(`record_layers`: T-Grad, the gradient CAMs, FullGrad, guided backprop, Poly-CAM) would make the
compiled graph recompile for every batch, so while a module of the model carries a hook the
forward runs eagerly instead; forward-only work (the metrics' forwards, RISE, Score-CAM's masked
forwards) and hook-free gradient methods run compiled. Methods that swap the model's modules or a
submodule's forward during a call (guided backprop, DeconvNet, Guided Grad-CAM, Ablation-CAM:
`SaliencyMethod.compilable` is False) are refused with `compile` by `generate`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from xaibench.core.choices import PRECISIONS
from xaibench.core.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """ConfigError for an unknown precision, or fp16 on a device without fast float16."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{precision!r}: use one of {', '.join(PRECISIONS)}", param="precision")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"fp16 needs a CUDA device (on {device.type} float16 is emulated and slower than "
            "fp32); use bf16",
            param="precision",
        )


@contextmanager
def tf32_settings(precision: str = "fp32") -> Iterator[None]:
    """TF32 matmuls and convolutions on (precision "tf32") or off (any other) for the block,
    restored after. They matter on CUDA only: the work that runs outside `forward_settings`
    (sanity checks, explain, verify, visualize) runs under this with "fp32", so that every stage
    computes in IEEE float32 rather than PyTorch's default TF32 convolutions. Also a decorator:
    `@tf32_settings()`."""
    flags = _tf32_flags()
    _set_tf32(precision == "tf32", precision == "tf32")
    try:
        yield
    finally:
        _set_tf32(*flags)


@contextmanager
def forward_settings(
    model: nn.Module, device: torch.device, precision: str = "fp32", compile: bool = False
) -> Iterator[nn.Module]:
    """For the duration of the block, `model(x)` runs at `precision` (and compiled with `compile`).

    On CUDA, cuDNN's autotuner (`torch.backends.cudnn.benchmark`) picks the fastest convolution
    for each input shape. The model's floating outputs are returned as float32. The TF32 and
    autotuner flags and the model's own `forward` are restored afterwards.
    """
    check_precision(precision, device)
    eager = model.forward
    forward = _autocast(eager, device, AUTOCAST_DTYPES.get(precision))
    if compile:
        forward = _compiled_unless_hooked(model, forward)
    benchmark = torch.backends.cudnn.benchmark
    previous = model.__dict__.get("forward")
    try:
        with tf32_settings(precision):
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = True
            model.forward = forward
            yield model
    finally:
        if previous is None:
            del model.forward
        else:
            model.forward = previous
        torch.backends.cudnn.benchmark = benchmark


def _autocast(
    forward: Callable[..., Any], device: torch.device, dtype: torch.dtype | None
) -> Callable[..., Any]:
    if dtype is None:
        return forward

    def autocast_forward(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device.type, dtype=dtype):
            output = forward(*args, **kwargs)
        return _to_float32(output)

    return autocast_forward


def _to_float32(output: Any) -> Any:
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output.float()
    if isinstance(output, tuple | list):
        return type(output)(_to_float32(o) for o in output)
    return output


def _compiled_unless_hooked(model: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    compiled = torch.compile(forward)

    def forward_compiled_unless_hooked(*args: Any, **kwargs: Any) -> Any:
        if has_hooks(model):
            return forward(*args, **kwargs)
        return compiled(*args, **kwargs)

    return forward_compiled_unless_hooked


def has_hooks(model: nn.Module) -> bool:
    """Whether any submodule of `model` carries a forward hook or pre-hook."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def _tf32_flags() -> tuple[bool, bool]:
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _set_tf32(matmul: bool, cudnn: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def full_precision(tensor: torch.Tensor) -> torch.Tensor:
    """A float16 or bfloat16 tensor (from a forward under autocast) as float32; others as they are."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor
