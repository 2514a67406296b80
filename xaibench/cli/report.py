"""`xaibench report`: one or several run folders into an HTML page and a Markdown page."""

from __future__ import annotations

from pathlib import Path

import click

from xaibench.cli.options import OutFolder, resamples_option
from xaibench.core.choices import DEFAULT_GRID_IMAGES


@click.command("report")
@click.argument(
    "run_dirs",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path, exists=True, file_okay=False),
)
@click.option(
    "--out",
    "out_dir",
    type=OutFolder(),
    default=Path("report"),
    show_default=True,
    help="Folder for report.html, report.md and the PNGs.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    default=None,
    help="The images the run explained, for the saliency overlays (skipped without it).",
)
@click.option(
    "--images",
    "grid_images",
    type=click.IntRange(min=1),
    default=DEFAULT_GRID_IMAGES,
    show_default=True,
    help="Images in the overlay grid.",
)
@resamples_option
def report_command(
    run_dirs: tuple[Path, ...],
    out_dir: Path,
    data_dir: Path | None,
    grid_images: int,
    resamples: int,
) -> None:
    """Report of RUN_DIRS (e.g. runs/vgg16: its stores, metrics/ and sanity/ folders; several
    folders, one per model, give one report comparing the models): summary tables, rankings and
    paired tests, mean insertion and deletion curves, saliency overlays, the sanity-check plots
    and every protocol and store setting.

    report.html is self-contained (figures embedded, nothing fetched); report.md links the PNGs
    written next to it.

    \b
    Example:
      xaibench report runs/vgg16 --out report/ --data val/
      xaibench report runs/vgg16 runs/resnet50 --out report/ --data val/
    """
    from xaibench.report.build import build_report

    written = build_report(
        run_dirs, out_dir, data_dir, grid_images=grid_images, resamples=resamples
    )
    for path in written.values():
        click.echo(str(path))
