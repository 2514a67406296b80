"""`xaibench sanity`: cascading model randomisation, per method a table and a plot."""

from __future__ import annotations

from pathlib import Path

import click

from xaibench.cli.options import (
    FiniteFloat,
    OutFolder,
    batch_size_option,
    data_options,
    device_options,
    method_param_option,
    model_option,
    protocol_option,
    saliency_option,
    seed_type,
    weights_option,
)
from xaibench.core.choices import DEFAULT_THRESHOLD
from xaibench.core.runtime import resolve_device
from xaibench.results.layout import sanity_checkpoint, sanity_dir


@click.command(
    "sanity", short_help="Cascading-randomisation sanity check of saliency methods (Adebayo 2018)."
)
@model_option
@weights_option
@saliency_option
@data_options
@click.option(
    "--out",
    "out_dir",
    type=OutFolder(),
    default=None,
    help="Output folder (default: runs/MODEL/sanity/).",
)
@click.option(
    "--seed", type=seed_type, default=0, show_default=True, help="Seed of the re-initialisations."
)
@click.option(
    "--depth",
    type=click.IntRange(min=1),
    default=None,
    help="Randomise blocks: modules grouped by the first N parts of their names (1: top-level "
    "blocks such as ResNet's layer4). Default: every module with parameters is its own stage.",
)
@click.option(
    "--threshold",
    type=FiniteFloat(-1, 1),
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Flag a method whose mean Spearman correlation at the last stage is above this.",
)
@method_param_option
@protocol_option
@device_options
@batch_size_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
def sanity_command(
    model: str,
    weights: str,
    methods: list[str],
    data_dir: Path,
    labels_file: Path | None,
    subset_file: Path | None,
    limit: int | None,
    workers: int | None,
    out_dir: Path | None,
    seed: int,
    depth: int | None,
    threshold: float,
    params: tuple[str, ...],
    protocol: str,
    cuda: bool,
    device: str | None,
    batch_size: int | None,
    quiet: bool,
) -> None:
    """Sanity check (Adebayo et al. 2018): randomise the model's layers from the output down,
    cumulatively, re-explain the same images at each stage and compare with the original maps.

    Writes METHOD.sanity.csv (image_id, stage, layer, spearman, spearman_abs, ssim) and
    METHOD.sanity.png (mean similarity vs layer with 95% intervals) per method, and flags methods
    whose maps do not change. Re-running an interrupted command resumes it.
    """
    from xaibench.data.dataset import ImageFolderDataset
    from xaibench.methods.settings import method_params
    from xaibench.metrics import get_protocol
    from xaibench.models import load_model
    from xaibench.pipelines.sanity import sanity_check, write_sanity
    from xaibench.pipelines.settings import RunSettings

    settings = method_params(methods, params)  # before the model: a bad --param fails fast
    run = RunSettings.resolve(
        resolve_device(device, cuda), batch_size=batch_size, workers=workers, progress=not quiet
    )
    loaded = load_model(model, weights)
    preprocess = get_protocol(protocol).preprocess(loaded.mean, loaded.std, loaded.input_size)
    dataset = ImageFolderDataset(
        data_dir, preprocess, labels_file=labels_file, subset_file=subset_file, limit=limit
    )
    destination = out_dir or sanity_dir(Path("runs"), loaded.name)
    for name in methods:
        checkpoint = sanity_checkpoint(destination, name)
        result = sanity_check(
            loaded,
            name,
            dataset,
            run,
            seed=seed,
            depth=depth,
            method_params=settings.get(name),
            threshold=threshold,
            checkpoint=checkpoint,
        )
        paths = write_sanity(result, destination, checkpoint)
        verdict = (
            "FLAGGED: its maps do not depend on the model's parameters"
            if result.flagged
            else "passes"
        )
        click.echo(
            f"{name}: mean Spearman {result.final_spearman:.3f} with every layer randomised "
            f"(threshold {threshold}): {verdict} -> {paths['table']}, {paths['plot']}"
        )
