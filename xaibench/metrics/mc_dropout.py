"""Monte-Carlo dropout uncertainty (Gal & Ghahramani 2016, "Dropout as a Bayesian Approximation").

K stochastic forward passes with only the model's dropout active give K samples of the class
probability p_c; their mean approximates the predictive mean and their variance
1/K sum_k (p_k - mean)^2 (the population variance, as in the paper's moment estimates) its
spread. Everything else stays in eval mode: batch norm keeps its running statistics, and stochastic
depth (torchvision's `StochasticDepth`, EfficientNet-Lite's `drop_connect` in `MBConvBlock`), which
drops whole residual branches rather than units, is left off. The K passes of a batch of B images run
as (K * B) images in chunks of `chunk_size` per forward.

Dropout is found in two forms:
- modules: `nn.Dropout`, `Dropout1d/2d/3d`, `AlphaDropout`, `FeatureAlphaDropout` (VGG's and
  torchvision EfficientNet's and MobileNetV3's classifiers, EfficientNet-Lite's `_dropout`);
- functional calls (`torch.nn.functional.dropout` and its 1d/2d/3d/alpha variants) made in a module's
  own forward with `training=self.training`, as DenseNet's `_DenseLayer` does. They are found by
  tracing one forward of a zero image with every module but the normalisation layers flagged as
  training and a `TorchFunctionMode` recording the calls and the module that made them; to activate
  one, only that module's own `training` flag is set (not its children's), so anything else its
  forward gates on `self.training` switches too (documented per model in the error messages).
  `torch.dropout` called directly, bypassing `torch.nn.functional`, is not seen.

The dropout masks are drawn from the CPU's generator whatever the model's device
(`_DropoutFromCPU`): each functional dropout call of a pass (an `nn.Dropout` module's included)
draws its mask by applying the same dropout to a CPU tensor of ones shaped like its input, so it
consumes the CPU generator exactly as a CPU run does, and the mask is copied to the device and
multiplied in. The samples of a seed are therefore the same on a GPU as on the CPU, given the same
activations (for the alpha variants, whose output is not a plain product, the input itself is
copied to the CPU and dropped there). A compiled forward (`compile`) may fuse dropout into its
own kernels and draws from the device's generator then.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from xaibench.core.batching import ChunkSize, apply_in_chunks
from xaibench.core.errors import ConfigError
from xaibench.methods.hooks import module_stack
from xaibench.methods.targets import explained_score
from xaibench.metrics.base import MetricContext, MetricResult

log = logging.getLogger(__name__)

DROPOUT_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
FUNCTIONAL_DROPOUT = (
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
)
MC_COLUMNS = ("mc_mean", "mc_var")
"""Per-image columns MC dropout adds to an evaluation table."""


@dataclass(frozen=True)
class DropoutSite:
    """One place where the model drops units: a dropout module, or a module whose forward calls
    functional dropout (`kind` "module" or "functional"); `p` is the drop probability."""

    name: str
    kind: str
    p: float

    def __str__(self) -> str:
        return f"{self.name or '(root)'} ({self.kind}, p={self.p:g})"


ALPHA_DROPOUT = (F.alpha_dropout, F.feature_alpha_dropout)
"""The functional dropouts whose output is not the input times a mask."""


def _dropout_arguments(func: Callable, args: tuple, kwargs: dict) -> dict[str, object]:
    """The arguments input, p, training and inplace of a call of a `FUNCTIONAL_DROPOUT`."""
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


class _RecordDropoutCalls(TorchFunctionMode):
    """Records (calling module, p, training) for every functional dropout call."""

    def __init__(self, stack: list[str]):
        super().__init__()
        self.stack, self.calls = stack, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in FUNCTIONAL_DROPOUT:
            call = _dropout_arguments(func, args, kwargs)
            name = self.stack[-1] if self.stack else ""
            self.calls.append((name, float(call["p"]), bool(call["training"])))
        return func(*args, **kwargs)


class _DropoutFromCPU(TorchFunctionMode):
    """Functional dropout (as training modules call it) with its random draws made on the CPU.

    The mask is the same dropout applied to CPU ones shaped (and strided) like the input, copied
    to the input's device and multiplied in: on the CPU, the very values and generator state of
    the dropout itself. The alpha variants drop a CPU copy of the input.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in FUNCTIONAL_DROPOUT:
            return func(*args, **kwargs)
        call = _dropout_arguments(func, args, kwargs)
        x, p, inplace = call["input"], call["p"], call["inplace"]
        if not call["training"] or p == 0:
            return func(*args, **kwargs)
        if func in ALPHA_DROPOUT:
            dropped = func(x.cpu(), p, True).to(x.device)
            return x.copy_(dropped) if inplace else dropped
        mask = func(torch.ones_like(x, device="cpu"), p, True)
        if x.device.type == "cuda":
            mask = mask.pin_memory().to(x.device, non_blocking=True)
        else:
            mask = mask.to(x.device)
        return x.mul_(mask) if inplace else x * mask


def find_dropout(model: nn.Module, input_size: tuple[int, int] = (224, 224)) -> list[DropoutSite]:
    """Every dropout site of `model`, in module order (see the module docstring for how)."""
    modules = dict(model.named_modules())
    sites = [
        DropoutSite(name, "module", float(m.p))
        for name, m in modules.items()
        if isinstance(m, DROPOUT_MODULES)
    ]
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    flags = {m: m.training for m in model.modules()}
    for m in flags:
        m.training = not isinstance(m, nn.modules.batchnorm._NormBase)
    try:
        with (
            torch.no_grad(),
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            module_stack(model) as stack,
            _RecordDropoutCalls(stack) as recorder,
        ):
            model(torch.zeros(1, 3, *input_size, device=device, dtype=dtype))
    finally:
        for m, training in flags.items():
            m.training = training
    seen = {site.name for site in sites}
    for name, p, training in recorder.calls:
        if training and name not in seen and not isinstance(modules[name], DROPOUT_MODULES):
            sites.append(DropoutSite(name, "functional", p))
            seen.add(name)
    return sites


@contextmanager
def dropout_active(model: nn.Module, sites: list[DropoutSite]) -> Iterator[nn.Module]:
    """The model as it is (eval mode, normally) with only the dropout `sites` in training mode."""
    modules = [model.get_submodule(site.name) for site in sites]
    flags = {m: m.training for m in modules}
    for m in modules:
        m.training = True
    try:
        yield model
    finally:
        for m, training in flags.items():
            m.training = training


def mc_dropout_probabilities(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    sites: list[DropoutSite],
    *,
    passes: int,
    chunk_size: int | ChunkSize,
    seed: int,
) -> torch.Tensor:
    """(passes, B): p(target) of each image (B, 3, H, W) in each stochastic pass.

    Pass k of image b is row k * B + b of one (passes * B) batch, run `chunk_size` images per
    forward. The masks come from the global CPU generator seeded with `seed` inside a fork (on
    every device: `_DropoutFromCPU`), so the caller's random state is untouched and the result is
    reproducible for the same seed, batch and chunk size.
    """
    b = images.shape[0]
    flat = torch.arange(passes * b, device=images.device)

    def probabilities(rows: torch.Tensor) -> torch.Tensor:
        logits = model(images[rows % b])
        return explained_score(logits.float(), targets[rows % b], "probability")

    with (
        torch.no_grad(),
        dropout_active(model, sites),
        torch.random.fork_rng(devices=[]),
        _DropoutFromCPU(),
    ):
        torch.random.default_generator.manual_seed(seed)
        return apply_in_chunks(probabilities, flat, chunk_size=chunk_size).view(passes, b)


class MCDropout:
    """MC-dropout columns `mc_mean` and `mc_var` for an evaluation, batch by batch.

    Finds the model's dropout sites once; a model without any is refused with a ConfigError, and
    one whose every site has p = 0 is accepted with a warning (its variance is exactly 0).
    The passes run in the batch context's chunks (`ctx.chunk_size`). Each batch is
    seeded from (`seed`, its first store row), so its values do not depend on the batches that ran
    before it: a resumed evaluation draws what an uninterrupted one drew for the same batches.
    """

    def __init__(
        self,
        model: nn.Module,
        passes: int,
        *,
        seed: int = 0,
        input_size: tuple[int, int] = (224, 224),
    ):
        if passes < 2:
            raise ConfigError(
                f"needs at least 2 passes to estimate a variance, got {passes}", param="mc_dropout"
            )
        self.model, self.passes, self.seed = model, passes, seed
        self.sites = find_dropout(model, input_size)
        if not self.sites:
            raise ConfigError(
                f"{type(model).__name__} has no dropout (no nn.Dropout-type module "
                "and no call of torch.nn.functional.dropout with training=self.training); "
                "MC-dropout uncertainty needs a model trained with dropout, such as vgg16, "
                "efficientnet_b0, mobilenet_v3_large or efficientnet_lite0",
                param="mc_dropout",
            )
        if all(site.p == 0 for site in self.sites):
            log.warning(
                "every dropout site of %s has p=0 (%s): the MC-dropout variance will be 0",
                type(model).__name__,
                ", ".join(map(str, self.sites)),
            )

    def key(self) -> str:
        """What a checkpoint must match to be resumed: passes, seed and the dropout sites."""
        sites = ", ".join(map(str, self.sites))
        return f"mc_dropout(passes={self.passes}, seed={self.seed}, sites={sites})"

    def score_batch(self, ctx: MetricContext, rows: np.ndarray) -> MetricResult:
        """values mc_mean, mc_var: (B,) for the batch of store rows `rows` (B,)."""
        seed = int(np.random.SeedSequence([self.seed, int(rows[0])]).generate_state(1)[0])
        samples = mc_dropout_probabilities(
            self.model,
            ctx.images,
            ctx.targets,
            self.sites,
            passes=self.passes,
            chunk_size=ctx.chunk_size,
            seed=seed,
        )
        return MetricResult(
            values={"mc_mean": samples.mean(dim=0), "mc_var": samples.var(dim=0, correction=0)}
        )
