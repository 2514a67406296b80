"""`xaibench import-maps`: maps made by another tool into a store that evaluate can score."""

from __future__ import annotations

from pathlib import Path

import click

from xaibench.cli.options import (
    OutFolder,
    batch_size_option,
    data_options,
    device_options,
    model_option,
    protocol_option,
    store_format_option,
    target_option,
    weights_option,
)
from xaibench.core.choices import PRECISION_CHOICES
from xaibench.core.runtime import resolve_device
from xaibench.results.layout import store_path


@click.command("import-maps")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--method",
    required=True,
    help="Name for the maps in the tables and the store's file name (e.g. lrp-zennit); not one of "
    "xaibench's own methods.",
)
@model_option
@weights_option
@data_options
@click.option(
    "--out",
    "out_dir",
    type=OutFolder(),
    default=Path("runs"),
    show_default=True,
    help="Output folder; the store goes to OUT/MODEL/METHOD.h5 (or .npz), as generate's.",
)
@store_format_option
@target_option
@protocol_option
@click.option(
    "--h5-maps",
    default=None,
    help="HDF5 source: the dataset of maps (N, h, w) (default: the file's only such dataset).",
)
@click.option(
    "--h5-ids",
    default=None,
    help="HDF5 source: a dataset of image ids naming its rows (default: `ids` if present, else "
    "the rows follow the images in order).",
)
@device_options
@batch_size_option
@click.option(
    "--precision",
    type=click.Choice(PRECISION_CHOICES),
    default="auto",
    show_default=True,
    help="Precision of the forward that finds each image's class and its probability (auto: tf32 "
    "on CUDA, fp32 elsewhere).",
)
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Record images whose map is missing, misshapen or not finite (and undecodable images) "
    "without a map, which evaluate leaves out, instead of stopping.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def import_maps_command(
    source: Path,
    method: str,
    model: str,
    weights: str,
    data_dir: Path,
    labels_file: Path | None,
    subset_file: Path | None,
    limit: int | None,
    workers: int | None,
    out_dir: Path,
    store_format: str,
    target: str,
    protocol: str,
    h5_maps: str | None,
    h5_ids: str | None,
    cuda: bool,
    device: str | None,
    batch_size: int | None,
    precision: str,
    skip_bad: bool,
    quiet: bool,
) -> None:
    """Store the maps at SOURCE, made by another tool, as the maps of --method on --model, so
    that `evaluate`, `compare` and `report` score them like xaibench's own.

    SOURCE is a folder of .npy files (one map per image, named as the image: n01440764/img0.npy
    or img0.npy), an .npz keyed by image file name (as the T-Grad authors' scripts write), or an
    .h5 file with an (N, h, w) dataset. Maps are (h, w) at any resolution (the metrics resize
    them); each image's class explained (--target) and its probability come from one forward of
    --model on the image, preprocessed as --protocol says. Maps that are missing, of another
    shape, or not finite are listed per file; the others are stored, so a re-run adds the fixed
    ones.

    \b
    Example:
      xaibench import-maps lrp-maps/ --method lrp-zennit --model vgg16 --data val/ --out runs/
      xaibench evaluate --model vgg16 --store runs/vgg16/lrp-zennit.h5 --data val/
    """
    from xaibench.data.dataset import ImageFolderDataset
    from xaibench.metrics import get_protocol
    from xaibench.models import load_model
    from xaibench.pipelines.import_maps import import_maps
    from xaibench.pipelines.settings import RunSettings

    settings = RunSettings.resolve(
        resolve_device(device, cuda),
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        progress=not quiet,
    )
    loaded = load_model(model, weights)
    preprocess = get_protocol(protocol).preprocess(loaded.mean, loaded.std, loaded.input_size)
    dataset = ImageFolderDataset(
        data_dir,
        preprocess,
        labels_file=labels_file,
        subset_file=subset_file,
        limit=limit,
        skip_bad=skip_bad,
    )
    path = store_path(out_dir, loaded.name, method, store_format)
    summary = import_maps(
        source,
        loaded,
        dataset,
        path,
        settings,
        method=method,
        target=target,
        skip_bad=skip_bad,
        h5_maps=h5_maps,
        h5_ids=h5_ids,
    )
    for problem in summary.problems:
        click.echo(f"not imported: {problem}", err=True)
    if summary.skipped:
        click.echo(
            f"{len(summary.skipped)} image(s) recorded without a map (target -1), which evaluate "
            "leaves out",
            err=True,
        )
    click.echo(f"{summary.images} maps imported in {summary.seconds:.1f} s -> {summary.store}")
