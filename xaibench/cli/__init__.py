"""The `xaibench` command: a thin click layer over the library functions."""

from __future__ import annotations

import sys

import click

import xaibench
from xaibench.cli.compare import compare_command
from xaibench.cli.download import download_command
from xaibench.cli.evaluate import evaluate_command
from xaibench.cli.explain import explain_command
from xaibench.cli.generate import generate_command
from xaibench.cli.listing import list_command
from xaibench.cli.report import report_command
from xaibench.cli.sanity import sanity_command
from xaibench.cli.verify import verify_command
from xaibench.cli.visualize import activations_command, visualize_command
from xaibench.core.errors import XaibenchError
from xaibench.core.runtime import tune_allocator


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


cli.add_command(download_command)
cli.add_command(verify_command)
cli.add_command(generate_command)
cli.add_command(evaluate_command)
cli.add_command(list_command)
cli.add_command(visualize_command)
cli.add_command(activations_command)
cli.add_command(sanity_command)
cli.add_command(compare_command)
cli.add_command(report_command)
cli.add_command(explain_command)


def main() -> None:
    """Console entry point: library errors become one line on stderr and exit code 2."""
    tune_allocator()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except XaibenchError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(2)
