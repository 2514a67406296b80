"""Numeric precision and compilation of the model's forward, applied in one place for a run.

`precision` ("auto", the default, is the device's `AUTO_PRECISION`: tf32 on CUDA, fp32 elsewhere):
- fp32: IEEE float32 everywhere (the CPU default, and what every store before this option holds). On
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

A model is compiled once per (device type, precision) and the compiled forward kept on it
(`COMPILED_ATTRIBUTE`), so later runs and stages reuse its graphs. Shapes are static: a batch of n
images is padded with zero images to the next power of two (`padded_size`) and the outputs cut
back to n, so the chunks of a run compile at most one graph per power of two instead of one per
tail length; a model's rows are independent in eval mode, so the padding changes no value.

`deterministic`: for the block, PyTorch's deterministic algorithms only
(`torch.use_deterministic_algorithms(True)`, an op without a deterministic implementation is a
ConfigError naming `deterministic`), cuDNN's autotuner off and its deterministic convolutions on,
and `CUBLAS_WORKSPACE_CONFIG` set to ":4096:8" where it is unset (cuBLAS reads it when the process
makes its first cuBLAS call, so a caller that computes on CUDA before the block calls
`request_deterministic_cublas` first, as the CLI does). Repeated runs on one GPU then give the
same bits; on a CPU the computations are the same with or without it.

Gradient scaling: under fp16 the scores a method backpropagates are multiplied by a scale S and
every gradient it reads (returned by `xaibench.methods.hooks.backward`, or received by a hook of
`record_layers`) is divided by S in float32, so that small gradients do not underflow float16's
range. S starts at `FP16_GRADIENT_SCALE` for every backward and is halved, and the backward run
again, while the gradients hold an Inf or NaN (as `torch.amp.GradScaler` does, without an
optimiser). Other precisions backpropagate the scores as they are (S = 1). A forward under fp16
whose logits overflow (Inf or NaN) is counted, and the count is logged when the block ends.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from xaibench.core.choices import AUTO_PRECISION, PRECISIONS
from xaibench.core.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP16_GRADIENT_SCALE = 2.0**12
"""The scale every backward under fp16 starts from (float16's largest finite value is 65504)."""
CUBLAS_WORKSPACE = ":4096:8"
"""The `CUBLAS_WORKSPACE_CONFIG` that makes cuBLAS deterministic."""
NONDETERMINISTIC = "does not have a deterministic implementation"
"""What PyTorch's error says of an op refused under `torch.use_deterministic_algorithms`."""

log = logging.getLogger(__name__)
_gradient_scale = 1.0


def resolve_precision(precision: str, device: torch.device) -> str:
    """`precision`, with "auto" as the device's default (`AUTO_PRECISION`: tf32 on CUDA, fp32
    elsewhere); ConfigError for a precision the device cannot run (`check_precision`)."""
    if precision == "auto":
        precision = AUTO_PRECISION.get(device.type, "fp32")
    check_precision(precision, device)
    return precision


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
def tf32_settings(precision: str = "auto") -> Iterator[None]:
    """TF32 matmuls and convolutions on (precision "tf32", or "auto": the CUDA default) or off (any
    other) for the block, restored after. They matter on CUDA only: the work that runs outside
    `forward_settings` (sanity checks, explain, verify, visualize) runs under this at "auto", so
    that every stage computes as `generate` does at its default. Also a decorator:
    `@tf32_settings()`."""
    flags = _tf32_flags()
    allowed = precision in ("tf32", "auto")
    _set_tf32(allowed, allowed)
    try:
        yield
    finally:
        _set_tf32(*flags)


@contextmanager
def forward_settings(
    model: nn.Module,
    device: torch.device,
    precision: str = "auto",
    compile: bool = False,
    deterministic: bool = False,
) -> Iterator[nn.Module]:
    """For the duration of the block, `model(x)` runs at `precision` ("auto": the device's,
    `resolve_precision`) (and compiled with `compile`,
    with deterministic algorithms only with `deterministic`: see the module docstring).

    On CUDA, cuDNN's autotuner (`torch.backends.cudnn.benchmark`) picks the fastest convolution
    for each input shape, unless `deterministic`. The model's floating outputs are returned as
    float32. Under fp16, backwards are scaled (`gradient_scaling`) and overflowing forwards
    counted. The TF32, autotuner and determinism flags, the gradient scale and the model's own
    `forward` are restored afterwards.
    """
    precision = resolve_precision(precision, device)
    eager = model.forward
    forward = _autocast(eager, device, AUTOCAST_DTYPES.get(precision))
    if compile:
        forward = _compiled_unless_hooked(model, forward, (device.type, precision))
    overflows = _Overflows(device) if precision == "fp16" else None
    if overflows is not None:
        forward = overflows.counting(forward)
    benchmark = torch.backends.cudnn.benchmark
    previous = model.__dict__.get("forward")
    try:
        with (
            tf32_settings(precision),
            deterministic_algorithms(deterministic),
            gradient_scaling(gradient_scale(precision)),
        ):
            if device.type == "cuda" and not deterministic:  # else deterministic_algorithms' off
                torch.backends.cudnn.benchmark = True
            model.forward = forward
            yield model
    finally:
        if previous is None:
            del model.forward
        else:
            model.forward = previous
        torch.backends.cudnn.benchmark = benchmark
    if overflows is not None:
        overflows.report()


@contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """With `enabled`, PyTorch's deterministic algorithms only for the block (see the module
    docstring); an op that has none raises ConfigError(param="deterministic"). The flags and
    `CUBLAS_WORKSPACE_CONFIG` are restored afterwards, also after an error. Without `enabled`,
    nothing changes."""
    if not enabled:
        yield
        return
    cudnn = torch.backends.cudnn
    flags = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        cudnn.benchmark,
        cudnn.deterministic,
    )
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    request_deterministic_cublas()
    torch.use_deterministic_algorithms(True, warn_only=False)
    cudnn.benchmark, cudnn.deterministic = False, True
    try:
        yield
    except RuntimeError as error:
        if NONDETERMINISTIC not in str(error):
            raise
        raise ConfigError(
            f"an operation of this run has no deterministic implementation ({error}); leave out "
            "`deterministic`",
            param="deterministic",
        ) from error
    finally:
        torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])
        cudnn.benchmark, cudnn.deterministic = flags[2], flags[3]
        if workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def request_deterministic_cublas() -> None:
    """Set `CUBLAS_WORKSPACE_CONFIG` to `CUBLAS_WORKSPACE` unless it is set: call it before the
    process's first CUDA matmul for `deterministic` to cover cuBLAS from the start."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def gradient_scale(precision: str) -> float:
    """The scale a backward at `precision` starts from: `FP16_GRADIENT_SCALE` for fp16, else 1."""
    return FP16_GRADIENT_SCALE if precision == "fp16" else 1.0


@contextmanager
def gradient_scaling(scale: float) -> Iterator[None]:
    """Backwards in the block scale their scores by `scale` (`current_gradient_scale`), restored
    afterwards. A process-wide setting (the hooks that read it may run on autograd's threads)."""
    global _gradient_scale
    if not scale > 0:
        raise ValueError(f"a gradient scale must be positive, got {scale!r}")
    previous, _gradient_scale = _gradient_scale, float(scale)
    try:
        yield
    finally:
        _gradient_scale = previous


def current_gradient_scale() -> float:
    """The scale of `gradient_scaling` in force: 1.0 outside any."""
    return _gradient_scale


class _Overflows:
    """Counts the rows (images) of forwards whose logits hold an Inf or NaN, on the device (no
    host sync per forward); `report` logs the count once."""

    def __init__(self, device: torch.device):
        self.rows = torch.zeros((), dtype=torch.int64, device=device)

    def counting(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        """`forward` that also counts the rows of its output (B, ...) that are not finite."""

        def counted_forward(*args: Any, **kwargs: Any) -> Any:
            output = forward(*args, **kwargs)
            if isinstance(output, torch.Tensor) and output.is_floating_point() and output.ndim:
                self.rows += (~torch.isfinite(output.detach())).flatten(1).any(dim=1).sum()
            return output

        return counted_forward

    def report(self) -> None:
        rows = int(self.rows)
        if rows:
            log.warning(
                "fp16: %d images' forwards gave Inf or NaN logits (float16 overflow); their maps "
                "and metric values are NaN: run them at bf16 or fp32",
                rows,
            )


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


COMPILED_ATTRIBUTE = "_xaibench_compiled_forwards"
"""Where a model keeps its compiled forwards, by (device type, precision), with the id of the
model they call: a copy of the model (`copy.deepcopy` copies this too) compiles its own."""


def _compiled_unless_hooked(
    model: nn.Module, forward: Callable[..., Any], key: tuple[str, str]
) -> Callable[..., Any]:
    """`forward` compiled (once per model and `key`, kept on the model), run on batches padded to
    `padded_size`; the eager `forward` while a submodule of `model` carries a hook."""
    kept = model.__dict__.get(COMPILED_ATTRIBUTE)
    if kept is None or kept["model"] != id(model):
        kept = model.__dict__[COMPILED_ATTRIBUTE] = {"model": id(model)}
    if key not in kept:
        kept[key] = torch.compile(forward, dynamic=False)
    compiled = kept[key]

    def forward_compiled_unless_hooked(*args: Any, **kwargs: Any) -> Any:
        if has_hooks(model):
            return forward(*args, **kwargs)
        if not args or not isinstance(args[0], torch.Tensor) or args[0].ndim == 0:
            return compiled(*args, **kwargs)
        images = args[0]
        count = images.shape[0]
        size = padded_size(count)
        if size == count:
            return compiled(*args, **kwargs)
        padding = images.new_zeros((size - count, *images.shape[1:]))
        output = compiled(torch.cat([images, padding]), *args[1:], **kwargs)
        return _first_rows(output, count, size)

    return forward_compiled_unless_hooked


def padded_size(count: int) -> int:
    """The batch size a compiled forward runs `count` images at: the next power of two."""
    return 1 << max(count - 1, 0).bit_length()


def _first_rows(output: Any, count: int, size: int) -> Any:
    if isinstance(output, torch.Tensor) and output.ndim and output.shape[0] == size:
        return output[:count]
    if isinstance(output, tuple | list):
        return type(output)(_first_rows(o, count, size) for o in output)
    return output


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
