"""`xaibench generate`: saliency maps for a dataset into one store per method."""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from xaibench.cli.options import (
    batch_size_option,
    comma_list,
    data_options,
    device_options,
    model_option,
    protocol_option,
    weights_option,
)
from xaibench.data.dataset import ImageFolderDataset
from xaibench.errors import ConfigError
from xaibench.generate import STORE_FORMATS, TARGETS, generate
from xaibench.methods import METHODS
from xaibench.models import load_model, protocol_preprocess
from xaibench.runtime import default_batch_size, resolve_device


@click.command("generate")
@model_option
@weights_option
@click.option(
    "--saliency",
    "methods",
    required=True,
    callback=comma_list,
    help="Method name(s), comma-separated (see `xaibench list methods`), e.g. tgrad,gradcam.",
)
@data_options
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Output folder; stores go to OUT/MODEL/METHOD.h5 (or .npz).",
)
@device_options
@batch_size_option
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="predicted",
    show_default=True,
    help="Class to explain: the model's top-1 prediction or the ground-truth label.",
)
@click.option(
    "--store",
    "store_format",
    type=click.Choice(STORE_FORMATS),
    default="h5",
    show_default=True,
    help="HDF5 store, or an npz the T-Grad authors' evaluation scripts can read.",
)
@click.option(
    "--layer",
    default=None,
    help="Target layer for CAM methods (a module name, e.g. features.28); default: found "
    "automatically.",
)
@protocol_option
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Skip images that cannot be decoded (listed at the end) instead of stopping.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate_command(
    model: str,
    weights: str,
    methods: list[str],
    data_dir: Path,
    labels_file: Path | None,
    limit: int | None,
    workers: int,
    out_dir: Path,
    cuda: bool,
    device: str | None,
    batch_size: int | None,
    target: str,
    store_format: str,
    layer: str | None,
    protocol: str,
    skip_bad: bool,
    quiet: bool,
) -> None:
    """Generate saliency maps for every image of --data, batched, resumable.

    Re-running the same command after an interruption skips the images already written.
    """
    if not methods:
        raise click.BadParameter("give at least one method", param_hint="--saliency")
    for name in methods:
        METHODS.get(name)
    chosen = resolve_device(device, cuda)
    loaded = load_model(model, weights)
    preprocess = protocol_preprocess(protocol, loaded.mean, loaded.std, loaded.input_size)
    dataset = ImageFolderDataset(
        data_dir, preprocess, labels_file=labels_file, limit=limit, skip_bad=skip_bad
    )
    summary = generate(
        loaded,
        methods,
        dataset,
        out_dir,
        device=chosen,
        batch_size=batch_size or default_batch_size(chosen),
        target=target,
        store_format=store_format,
        workers=workers,
        method_params=_layer_params(methods, layer),
        progress=not quiet,
    )
    for skipped in summary.skipped:
        click.echo(f"skipped (cannot decode): {skipped}", err=True)
    if summary.skipped:
        click.echo(
            f"{len(summary.skipped)} image(s) skipped: recorded with a NaN map and target -1, "
            "which evaluate leaves out",
            err=True,
        )
    stores = ", ".join(str(p) for p in summary.stores)
    if summary.images == 0 and not summary.skipped:
        click.echo(f"nothing to do: every image is already in {stores}")
        return
    click.echo(
        f"{summary.images} images in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.2f} img/s) -> {stores}"
    )


def _layer_params(methods: list[str], layer: str | None) -> dict[str, dict]:
    if layer is None:
        return {}
    takes_layer = [m for m in methods if "layer" in inspect.signature(METHODS.get(m)).parameters]
    if not takes_layer:
        raise ConfigError(
            f"--layer is only used by CAM methods; none of {', '.join(methods)} is one"
        )
    return {m: {"layer": layer} for m in takes_layer}
