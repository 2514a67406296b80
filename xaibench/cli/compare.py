"""`xaibench compare`: several evaluations merged into one table, with paired tests."""

from __future__ import annotations

from pathlib import Path

import click

from xaibench.cli.options import resamples_option
from xaibench.core.atomic import write_text_atomic
from xaibench.core.choices import INTERVALS, LATEX_STYLES


@click.command("compare")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--interval",
    type=click.Choice(INTERVALS),
    default="bootstrap",
    show_default=True,
    help="Interval shown next to each mean: the percentile bootstrap or Student's t.",
)
@click.option(
    "--digits",
    type=click.IntRange(0, 8),
    default=3,
    show_default=True,
    help="Decimals of the means and intervals.",
)
@click.option(
    "--latex",
    "latex_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also write the table as LaTeX (booktabs) to this file.",
)
@click.option(
    "--latex-style",
    type=click.Choice(LATEX_STYLES),
    default="brackets",
    show_default=True,
    help="LaTeX cells as mean [low, high] or mean ± half-width.",
)
@click.option(
    "--markdown",
    "markdown_file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the Markdown to this file instead of printing it.",
)
@click.option(
    "--no-paired",
    is_flag=True,
    help="Only the summary table: no rankings and paired tests (which need the same images).",
)
@resamples_option
def compare_command(
    paths: tuple[Path, ...],
    interval: str,
    digits: int,
    latex_file: Path | None,
    latex_style: str,
    markdown_file: Path | None,
    no_paired: bool,
    resamples: int,
) -> None:
    """Merge evaluations (metrics/ folders of `xaibench evaluate`, or its *.per_image.csv files)
    into one table: methods as rows, metrics as columns, grouped by model and protocol, best of
    each group in bold. A metric appears only under the protocols it was evaluated under;
    protocols of one name that differ only in settings a metric does not read are one for it.

    Then, per group, a ranking table per metric and the paired comparisons of every two methods
    on the same images (Wilcoxon signed-rank p-value, win rate). Methods of one group evaluated on
    different images or protocol settings are refused, naming the files.

    \b
    Example:
      xaibench compare runs/*/metrics --latex table.tex
    """
    from xaibench.report.tables import (
        comparison_markdown,
        comparison_summary,
        latex_comparison,
        load_evaluations,
        paired_tables,
    )

    evaluations = load_evaluations(paths)
    summary = comparison_summary(evaluations, resamples)
    tables = None if no_paired else paired_tables(evaluations)
    markdown = comparison_markdown(summary, tables, interval=interval, digits=digits)
    if latex_file:
        write_text_atomic(latex_file, latex_comparison(summary, interval, digits, latex_style))
        click.echo(f"LaTeX table -> {latex_file}", err=True)
    if markdown_file:
        write_text_atomic(markdown_file, markdown)
        click.echo(f"Markdown -> {markdown_file}", err=True)
    else:
        click.echo(markdown, nl=False)
