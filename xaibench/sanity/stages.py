"""The stages of cascading randomisation: the model's parameterised modules, top (output) first.

Modules are found by tracing one forward pass with a hook on every named submodule (no layer
names or counts are assumed). A module with parameters of its own is one unit; `depth` groups
units by the first `depth` parts of their names (depth=1: top-level blocks such as ResNet's
`layer4`). Stages come in reverse order of the forward pass, by the first run of a group's first
module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from xaibench.core.checks import positive_int
from xaibench.core.errors import ConfigError
from xaibench.methods.layers import trace_layers


@dataclass(frozen=True)
class Stage:
    """name: the group randomised at this stage (a module name, or a prefix with `depth`);
    modules: the names of its modules with parameters of their own."""

    name: str
    modules: tuple[str, ...]


def _own_parameters(module: nn.Module) -> list[nn.Parameter]:
    return list(module.parameters(recurse=False))


def randomisation_stages(
    model: nn.Module, input_size: tuple[int, int] | None = None, depth: int | None = None
) -> list[Stage]:
    """The stages, output first. Modules that do not run in a forward pass at `input_size` (None:
    the model's own, `model_input_size`) are left out."""
    if depth is not None:
        positive_int(depth, "depth")
    names = {n for n, m in model.named_modules() if n and _own_parameters(m)}
    if not names:
        raise ConfigError(f"{type(model).__name__} has no submodule with parameters to randomise")
    calls = trace_layers(model, input_size)
    ran = list(dict.fromkeys(call.name for call in calls if call.name in names))
    groups: dict[str, list[str]] = {}
    for name in ran:
        key = ".".join(name.split(".")[:depth]) if depth else name
        groups.setdefault(key, []).append(name)
    return [Stage(key, tuple(members)) for key, members in reversed(groups.items())]


def randomise(model: nn.Module, stage: Stage, seed: int, index: int) -> None:
    """Re-initialise the stage's modules in place with their own `reset_parameters()`, under a
    seed derived from (seed, index); the global random state is left as it was.

    A module without `reset_parameters` has each of its own parameters redrawn from a normal
    distribution with that parameter's mean and std. The draws, and the arithmetic of the
    initialisation, run on the CPU (a module on another device is moved there for it and back,
    its parameters keeping their identity), so a seed gives the same weights on every device.
    """
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.random.default_generator.manual_seed(seed * 1_000_003 + index)
        for name in stage.modules:
            module = model.get_submodule(name)
            with _on_cpu(module):
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                    continue
                for parameter in _own_parameters(module):
                    spread = parameter.std() if parameter.numel() > 1 else parameter.abs()
                    parameter.normal_(parameter.mean().item(), float(spread))


@contextmanager
def _on_cpu(module: nn.Module) -> Iterator[None]:
    """The module's parameters and buffers on the CPU for the block, then back on their device."""
    tensors = [*module.parameters(), *module.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    if device.type == "cpu":
        yield
        return
    module.to("cpu")
    try:
        yield
    finally:
        module.to(device)
