"""`xaibench list models|methods|metrics`."""

from __future__ import annotations

import click

from xaibench.methods import METHODS
from xaibench.metrics import METRICS
from xaibench.models import MODELS

_REGISTRIES = {"models": MODELS, "methods": METHODS, "metrics": METRICS}


@click.command("list")
@click.argument("what", type=click.Choice(sorted(_REGISTRIES)))
@click.argument("pattern", default="*")
def list_command(what: str, pattern: str) -> None:
    """Print the available models, methods or metrics (PATTERN: a wildcard such as 'resnet*')."""
    registry = _REGISTRIES[what]
    names = registry.names(pattern)
    width = max((len(n) for n in names), default=0)
    for name in names:
        click.echo(f"{name:<{width}}  {registry.entry(name).help}".rstrip())
