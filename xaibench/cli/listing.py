"""`xaibench list models|methods|metrics`."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import click

from xaibench.cli.errors import flag_text
from xaibench.core.lazy import load

if TYPE_CHECKING:
    from xaibench.methods.support import Finding, ModelSupport

_REGISTRIES = {
    "models": "xaibench.models:MODELS",
    "methods": "xaibench.methods:METHODS",
    "metrics": "xaibench.metrics:METRICS",
}
"""What `list` prints -> where its registry lives, imported when it is listed."""
_COLUMNS = (
    ("T-Grad/FullGrad", "bias_terms"),
    ("guided", "relu_modules"),
    ("attention", "class_attention"),
    ("CAM layer", "cam_layer"),
)
"""(title, requirement) per column; the CAM layer, whose names can be long, comes last."""
_CELL = len("partial")
"""The widest status a cell shows."""
_SHORT = {"yes": "exact", "approximate": "approx"}


@click.command("list")
@click.argument("what", type=click.Choice(sorted(_REGISTRIES)))
@click.argument("pattern", default="*")
@click.option(
    "--why",
    is_flag=True,
    help="Models: for each matching model, every method's support and the reason.",
)
@click.option(
    "--support/--no-support",
    default=True,
    show_default=True,
    help="Models: inspect each model's structure (about 0.2 s a model) or print the names only.",
)
@click.option(
    "--weights",
    default="none",
    show_default=True,
    help="Models: inspect the architecture (none, on the meta device, no weights allocated), or "
    "load these weights first (default, a weights name, a path), which can change the structure.",
)
def list_command(what: str, pattern: str, why: bool, support: bool, weights: str) -> None:
    """Print the available models, methods or metrics (PATTERN: a wildcard such as 'resnet*').

    \b
    For models, one line each with what the model offers:
      T-Grad/FullGrad  exact: built from linear pieces, input + bias terms = the score;
                       approx: other pieces (SiLU, ReLU6, gating, LayerNorm) make it approximate;
                       no: attention, or batch-norm without running statistics
      guided           guided backprop / DeconvNet: yes, partial (other activations are not
                       rectified) or no (no nn.ReLU module runs)
      attention        attention rollout / gradient-weighted attention: yes where every
                       attention layer attends over a class token and the patches (ViT, DeiT)
      CAM layer        the layer CAM methods read by default: a CNN's last feature map, Swin's
                       final grid, a ViT's last attention input (its tokens on the patch grid);
                       '-': none
    Every other method (gradients, SmoothGrad, Integrated Gradients, RISE, baselines) runs on
    every model. Support is read off the model's structure, never off its name.

    \b
      xaibench list models 'mobilenet*'
      xaibench list models vit_b_16 --why
    """
    registry = load(_REGISTRIES[what])
    names = registry.names(pattern)
    width = max((len(n) for n in names), default=0)
    if what != "models" or not support:
        for name in names:
            click.echo(f"{name:<{width}}  {flag_text(registry.entry(name).help)}".rstrip())
        return
    from xaibench.methods.support import support_by_name

    if not why:
        titles = [f"{title:<{max(len(title), _CELL)}}" for title, _ in _COLUMNS]
        header = [f"{'model':<{width}}", "input", *titles]
        click.echo("  ".join(header).rstrip())
    for name in names:
        found = support_by_name(name, weights)
        click.echo(_reasons(name, found) if why else _row(name, found, width))
    if not why and names:
        click.echo("Reasons per method: xaibench list models NAME --why")


def _row(name: str, found: ModelSupport, width: int) -> str:
    h, w = found.input_size
    cells = [f"{name:<{width}}", f"{h if h == w else f'{h}x{w}':<5}"]
    cells += [f"{_cell(found, key):<{max(len(title), _CELL)}}" for title, key in _COLUMNS]
    return "  ".join(cells).rstrip()


def _cell(found: ModelSupport, key: str) -> str:
    if key == "cam_layer":
        return found.cam_layer or "-"
    status = found.findings[key].status
    return _SHORT.get(status, status) if key == "bias_terms" else status


def _reasons(name: str, found: ModelSupport) -> str:
    """The model's methods grouped by identical support, each group with its reason."""
    groups: dict[Finding, list[str]] = {}
    for method, finding in found.methods().items():
        groups.setdefault(finding, []).append(method)
    h, w = found.input_size
    lines = [f"{name} (input {h}x{w})"]
    for finding, methods in sorted(groups.items(), key=lambda item: item[0].status != "yes"):
        lines.append(_wrap(f"{finding.status:<11}  {', '.join(methods)}", "  ", " " * 15))
        if finding.reason:
            lines.append(_wrap(flag_text(finding.reason), " " * 15, " " * 15))
    return "\n".join(lines)


def _wrap(text: str, first: str, rest: str) -> str:
    return textwrap.fill(text, 100, initial_indent=first, subsequent_indent=rest)
