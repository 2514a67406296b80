"""`xaibench evaluate`: faithfulness metrics of one or more stores into tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from xaibench.cli.options import (
    OutFolder,
    batch_size_option,
    comma_list,
    data_options,
    device_options,
    metric_list,
    model_option,
    own_model,
    own_model_options,
    preprocessing_option,
    protocol_option,
    seed_type,
    speed_options,
    weights_option,
)
from xaibench.core.choices import DEFAULT_METRICS
from xaibench.core.runtime import resolve_device

if TYPE_CHECKING:
    from xaibench.pipelines.evaluate import WrittenEvaluation


@click.command("evaluate")
@model_option
@weights_option
@own_model_options
@click.option(
    "--store",
    "stores",
    required=True,
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Saliency store (.h5 or .npz) made by `xaibench generate`; repeat for several methods.",
)
@data_options
@protocol_option
@preprocessing_option
@click.option(
    "--metrics",
    callback=metric_list,
    default=",".join(DEFAULT_METRICS),
    show_default=True,
    help="Comma-separated metric names (see `xaibench list metrics`), including the Quantus "
    "metrics quantus.NAME, e.g. quantus.Sparseness (needs pip install 'xaibench[quantus]').",
)
@click.option(
    "--metric-param",
    "metric_param_texts",
    multiple=True,
    metavar="METRIC.KEY=VALUE",
    help="A setting of a metric of --metrics that has its own (the Quantus ones: the Quantus "
    "class's constructor parameters, and seed), e.g. quantus.FaithfulnessCorrelation.nr_runs=10. "
    "VALUE is read as JSON when it parses, else as text. Repeatable.",
)
@click.option(
    "--step",
    type=click.IntRange(min=1),
    default=None,
    help="Pixels changed per insertion/deletion step (overrides the protocol's 224).",
)
@device_options
@batch_size_option
@speed_options
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=None,
    help="Perturbed images per forward pass (default: 16 on CPU, 256 on CUDA).",
)
@click.option(
    "--out",
    "out_dir",
    type=OutFolder(),
    default=None,
    help="Output folder (default: a metrics/ folder next to the store).",
)
@click.option(
    "--boxes",
    "boxes_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder of Pascal-VOC bounding-box XML files named by image stem "
    "(boxes/ILSVRC2012_val_00000001.xml); adds pointing_game and energy_pointing to --metrics.",
)
@click.option(
    "--road-percentages",
    callback=comma_list,
    default=None,
    help="Percentages of pixels ROAD removes, comma-separated (default 10,20,...,90).",
)
@click.option(
    "--allow-incomplete",
    is_flag=True,
    help="Evaluate the finished rows of a store whose generation is not complete.",
)
@click.option(
    "--mc-dropout",
    type=click.IntRange(min=2),
    default=None,
    metavar="K",
    help="Add mc_mean and mc_var: mean and variance of the class probability over K passes with "
    "only dropout active (K x batch images, --chunk-size per forward).",
)
@click.option(
    "--mc-seed", type=seed_type, default=0, show_default=True, help="Seed of --mc-dropout."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate_command(
    model: str,
    weights: str,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    input_size: tuple[int, ...] | None,
    crop: float | None,
    stores: tuple[Path, ...],
    data_dir: Path,
    labels_file: Path | None,
    subset_file: Path | None,
    limit: int | None,
    workers: int | None,
    protocol: str,
    preprocessing: str,
    metrics: list[str],
    metric_param_texts: tuple[str, ...],
    step: int | None,
    cuda: bool,
    device: str | None,
    batch_size: int | None,
    precision: str,
    compile_model: bool,
    deterministic: bool,
    chunk_size: int | None,
    out_dir: Path | None,
    boxes_dir: Path | None,
    road_percentages: list[str],
    allow_incomplete: bool,
    mc_dropout: int | None,
    mc_seed: int,
    quiet: bool,
) -> None:
    """Score saliency stores with Insertion, Deletion, Ins-Del, Average Drop % and % Increase in
    Confidence (the default), ROAD MoRF/LeRF (road_morf, road_lerf) and, with --boxes, the
    pointing game and the energy-based pointing game, batched over images and perturbations.

    Writes per image a CSV (Parquet too when pyarrow is installed), the curves (npz) and a summary
    (count, mean, 95% t-interval and bootstrap interval) per metric and of the generation time per
    image (seconds_per_image), and prints the summary as Markdown with the bootstrap interval.
    Every output records the protocol and its settings. Under
    `torchrun --nproc-per-node N -m xaibench evaluate ...` each process evaluates its share of the
    rows and process 0 writes the same tables; logs go to the (first) output folder's logs/.
    """
    from xaibench.core.precision import request_deterministic_cublas
    from xaibench.metrics import metric_params
    from xaibench.pipelines.evaluate import evaluate_stores
    from xaibench.pipelines.settings import RunSettings

    run = RunSettings.resolve(
        resolve_device(device, cuda),
        batch_size=batch_size,
        workers=workers,
        chunk_size=chunk_size,
        precision=precision,
        compile=compile_model,
        progress=not quiet,
        deterministic=deterministic,
    )
    if deterministic:
        request_deterministic_cublas()  # before the first CUDA matmul
    written = evaluate_stores(
        stores,
        model,
        data_dir,
        run,
        weights=weights,
        own_model=own_model(mean, std, input_size, crop),
        labels_file=labels_file,
        subset_file=subset_file,
        protocol=protocol,
        preprocessing=preprocessing,
        step=step,
        road_percentages=road_percentages,
        metrics=metrics,
        metric_params=metric_params(metric_param_texts),
        boxes=boxes_dir,
        out_dir=out_dir,
        limit=limit,
        allow_incomplete=allow_incomplete,
        mc_dropout=mc_dropout or 0,
        mc_seed=mc_seed,
    )
    if written:  # process 0
        _report(written)


def _report(written: list[WrittenEvaluation]) -> None:
    import pandas as pd

    from xaibench.results.stats import summary_markdown, summary_wide

    for one in written:
        images = len(one.evaluation.per_image)
        click.echo(f"{one.store}: {images} images -> {one.paths['summary'].parent}/", err=True)
    table = pd.concat([one.evaluation.summary for one in written], ignore_index=True)
    protocol = written[0].evaluation.protocol
    settings_text = ", ".join(f"{k}={v}" for k, v in protocol.to_dict().items() if k != "name")
    click.echo(f"\nProtocol {protocol.name} ({settings_text}).")
    click.echo("Mean [95% percentile bootstrap CI] over images (t-interval in the summary CSV);")
    click.echo("avg_drop and increase in %.\n")
    click.echo(summary_markdown(summary_wide(table)))
