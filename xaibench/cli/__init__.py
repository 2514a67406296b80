"""The `xaibench` command: a thin click layer over the library functions."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import click

import xaibench
from xaibench.cli.errors import error_text, usage_text
from xaibench.core.errors import XaibenchError
from xaibench.core.lazy import load
from xaibench.core.runtime import tune_allocator

COMMANDS = {
    "download": "xaibench.cli.download:download_command",
    "verify": "xaibench.cli.verify:verify_command",
    "generate": "xaibench.cli.generate:generate_command",
    "evaluate": "xaibench.cli.evaluate:evaluate_command",
    "list": "xaibench.cli.listing:list_command",
    "visualize": "xaibench.cli.visualize:visualize_command",
    "activations": "xaibench.cli.visualize:activations_command",
    "sanity": "xaibench.cli.sanity:sanity_command",
    "compare": "xaibench.cli.compare:compare_command",
    "report": "xaibench.cli.report:report_command",
    "explain": "xaibench.cli.explain:explain_command",
    "run": "xaibench.cli.run:run_command",
    "import-maps": "xaibench.cli.import_maps:import_maps_command",
}
"""Command name -> "module:attribute" of its click command."""


class LazyGroup(click.Group):
    """A group whose commands are imported when first looked up, from a table of
    name -> "module:attribute"; listed (in --help) sorted by name, as click lists its own."""

    def __init__(self, *args: Any, lazy_commands: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            self.add_command(load(self.lazy_commands[cmd_name]), cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(xaibench.__version__, prog_name="xaibench")
def cli() -> None:
    """Benchmark saliency methods for ImageNet classifiers.

    \b
    Typical run:
      xaibench download imagenet-val --dest data/imagenet --archive ILSVRC2012_img_val.tar ...
      xaibench generate --model vgg16 --saliency tgrad,gradcam --data val/ --out runs/ --cuda
      xaibench evaluate --model vgg16 --store runs/vgg16/tgrad.h5 --data val/ --cuda
      xaibench report runs/vgg16 --out report/ --data val/
    """


def main(args: list[str] | None = None) -> None:
    """Console entry point (`args`: the command line, default `sys.argv[1:]`). Errors, the
    library's and click's alike, become `error: ...` on stderr and exit code 2 (a usage error
    also names the command's --help); a command's own exit code is kept; Ctrl-C exits with 130."""
    tune_allocator()
    try:
        code = cli.main(args, prog_name="xaibench", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as error:
        click.echo(f"error: {usage_text(error)}", err=True)
        context = getattr(error, "ctx", None)
        if context is not None:
            click.echo(f"see: {context.command_path} --help", err=True)
        sys.exit(error.exit_code)
    except XaibenchError as error:
        click.echo(f"error: {error_text(error)}", err=True)
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)  # `ctx.exit(1)` of a command (verify), returned without standalone mode
