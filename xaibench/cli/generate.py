"""`xaibench generate`: saliency maps for a dataset into one store per method."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from xaibench.cli.options import (
    OutFolder,
    batch_size_option,
    cam_layer_option,
    data_options,
    device_options,
    method_param_option,
    model_option,
    own_model,
    own_model_options,
    preprocessing_option,
    protocol_option,
    saliency_option,
    speed_options,
    store_format_option,
    target_option,
    weights_option,
)
from xaibench.core.runtime import resolve_device
from xaibench.results.layout import STORE_COMPRESSIONS, logs_dir

if TYPE_CHECKING:
    from xaibench.pipelines.generate import GenerateSummary


@click.command("generate")
@model_option
@weights_option
@own_model_options
@saliency_option
@data_options
@click.option(
    "--out",
    "out_dir",
    type=OutFolder(),
    default=Path("runs"),
    show_default=True,
    help="Output folder; stores go to OUT/MODEL/METHOD.h5 (or .npz).",
)
@click.option(
    "--name",
    default=None,
    help="Name of the store of one method run under other settings (another --layer, --param "
    "or --target): OUT/MODEL/NAME.h5, shown in tables, compare and report in place of the "
    "method, so variants sit side by side. Default: the method's name.",
)
@device_options
@batch_size_option
@speed_options
@target_option
@store_format_option
@click.option(
    "--compression",
    type=click.Choice(list(STORE_COMPRESSIONS)),
    default="lzf",
    show_default=True,
    help="Compression of the maps of new stores: none writes fastest (larger files), gzip is "
    "smallest and slowest. The maps are the same.",
)
@cam_layer_option
@method_param_option
@protocol_option
@preprocessing_option
@click.option(
    "--skip-bad",
    is_flag=True,
    help="Skip images that cannot be decoded (listed at the end) instead of stopping.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def generate_command(
    model: str,
    weights: str,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    input_size: tuple[int, ...] | None,
    crop: float | None,
    methods: list[str],
    data_dir: Path,
    labels_file: Path | None,
    subset_file: Path | None,
    limit: int | None,
    workers: int | None,
    out_dir: Path,
    name: str | None,
    cuda: bool,
    device: str | None,
    batch_size: int | None,
    precision: str,
    compile_model: bool,
    deterministic: bool,
    target: str,
    store_format: str,
    compression: str,
    layer: str | None,
    params: tuple[str, ...],
    protocol: str,
    preprocessing: str,
    skip_bad: bool,
    quiet: bool,
) -> None:
    """Generate saliency maps for every image of --data, batched, resumable.

    Re-running the same command after an interruption skips the images already written. Under
    `torchrun --nproc-per-node N -m xaibench generate ...` each process explains its share of the
    images and process 0 merges them into the same stores; logs go to OUT/MODEL/logs/.
    """
    from xaibench import dist
    from xaibench.core.precision import request_deterministic_cublas
    from xaibench.data.dataset import ImageFolderDataset
    from xaibench.methods.settings import method_params
    from xaibench.metrics import get_protocol
    from xaibench.models import load_model
    from xaibench.pipelines.generate import check_store_name, generate
    from xaibench.pipelines.settings import RunSettings

    settings = method_params(methods, params, layer)  # before the model: a bad --param fails fast
    if name is not None:
        check_store_name(name, methods)
    run = RunSettings.resolve(
        resolve_device(device, cuda),
        batch_size=batch_size,
        workers=workers,
        precision=precision,
        compile=compile_model,
        progress=not quiet,
        deterministic=deterministic,
    )
    if deterministic:
        request_deterministic_cublas()  # before the first CUDA matmul
    with dist.launch(run.device, logs_dir(out_dir, model)) as world:
        loaded = load_model(model, weights, **own_model(mean, std, input_size, crop))
        preprocess = get_protocol(protocol).preprocess_for(loaded, preprocessing)
        dataset = ImageFolderDataset(
            data_dir,
            preprocess,
            labels_file=labels_file,
            limit=limit,
            skip_bad=skip_bad,
            subset_file=subset_file,
        )
        summary = generate(
            loaded,
            methods,
            dataset,
            out_dir,
            run.on(world.device),
            target=target,
            store_format=store_format,
            method_params=settings,
            compression=STORE_COMPRESSIONS[compression],
            world=world,
            name=name,
        )
    if world.is_main:
        _report(summary)


def _report(summary: GenerateSummary) -> None:
    for skipped in summary.skipped:
        click.echo(f"skipped (cannot decode): {skipped}", err=True)
    if summary.skipped:
        click.echo(
            f"{len(summary.skipped)} image(s) skipped: recorded with a NaN map and target -1, "
            "which evaluate leaves out",
            err=True,
        )
    for name, size in summary.batch_sizes.items():
        click.echo(f"{name}: out of device memory, ran at batch size {size}", err=True)
    stores = ", ".join(str(p) for p in summary.stores)
    if summary.images == 0 and not summary.skipped:
        click.echo(f"nothing to do: every image is already in {stores}")
        return
    click.echo(
        f"{summary.images} images in {summary.seconds:.1f} s "
        f"({summary.images_per_second:.2f} img/s) -> {stores}"
    )
