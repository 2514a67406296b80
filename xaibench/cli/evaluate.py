"""`xaibench evaluate`: faithfulness metrics of one or more stores into tables."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from xaibench import dist
from xaibench.cli.options import (
    batch_size_option,
    comma_list,
    data_options,
    device_options,
    model_option,
    protocol_option,
    speed_options,
    weights_option,
)
from xaibench.core.runtime import default_batch_size, default_workers, resolve_device
from xaibench.data.dataset import ImageFolderDataset
from xaibench.metrics import METRICS, get_protocol
from xaibench.models import load_model
from xaibench.pipelines import checkpoint as checkpoints
from xaibench.pipelines.evaluate import checkpoint_path, evaluate_store, write_evaluation
from xaibench.results.layout import metrics_dir
from xaibench.results.stats import summary_markdown, summary_wide

DEFAULT_METRICS = "insertion,deletion,ins_del,avg_drop,increase"


@click.command("evaluate")
@model_option
@weights_option
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
@click.option(
    "--metrics",
    callback=comma_list,
    default=DEFAULT_METRICS,
    show_default=True,
    help="Comma-separated metric names (see `xaibench list metrics`).",
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
    type=click.Path(path_type=Path),
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
@click.option("--mc-seed", type=int, default=0, show_default=True, help="Seed of --mc-dropout.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate_command(
    model: str,
    weights: str,
    stores: tuple[Path, ...],
    data_dir: Path,
    labels_file: Path | None,
    subset_file: Path | None,
    limit: int | None,
    workers: int | None,
    protocol: str,
    metrics: list[str],
    step: int | None,
    cuda: bool,
    device: str | None,
    batch_size: int | None,
    precision: str,
    compile_model: bool,
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
    if not metrics:
        raise click.BadParameter("give at least one metric", param_hint="--metrics")
    if boxes_dir is not None:
        box_metrics = [m for m in METRICS.names() if METRICS.get(m).needs_boxes]
        metrics = metrics + [m for m in box_metrics if m not in metrics]
    for name in metrics:  # before the model loads; evaluate_store checks again for its callers
        if METRICS.get(name).needs_boxes and boxes_dir is None:
            raise click.BadParameter(
                f"{name} needs bounding boxes: pass --boxes DIR", param_hint="--metrics"
            )
    destinations = [out_dir or metrics_dir(store) for store in stores]
    outputs = [(d.resolve(), s.stem) for d, s in zip(destinations, stores, strict=True)]
    if len(set(outputs)) != len(outputs):
        raise click.BadParameter(
            "two stores would write the same tables (same method name and output folder); "
            "evaluate them separately with different --out folders",
            param_hint="--store",
        )
    overrides = {"step": step} if step else {}
    if road_percentages:
        overrides["road_percentages"] = tuple(
            _number(p, "--road-percentages") for p in road_percentages
        )
    settings = get_protocol(protocol, **overrides)
    summaries = []
    with dist.launch(resolve_device(device, cuda), destinations[0] / "logs") as world:
        loaded = load_model(model, weights)
        preprocess = settings.preprocess(loaded.mean, loaded.std, loaded.input_size)
        dataset = ImageFolderDataset(
            data_dir, preprocess, labels_file=labels_file, subset_file=subset_file
        )
        for store, destination in zip(stores, destinations, strict=True):
            checkpoint = checkpoint_path(destination, store, settings)
            evaluation = evaluate_store(
                store,
                loaded,
                dataset,
                settings,
                metrics,
                device=world.device,
                batch_size=batch_size or default_batch_size(world.device),
                chunk_size=chunk_size,
                workers=default_workers(world.device) if workers is None else workers,
                limit=limit,
                allow_incomplete=allow_incomplete,
                checkpoint=checkpoint,
                precision=precision,
                compile=compile_model,
                progress=not quiet,
                mc_dropout=mc_dropout or 0,
                mc_seed=mc_seed,
                boxes=boxes_dir,
                world=world,
            )
            if not world.is_main:
                continue
            paths = write_evaluation(evaluation, destination)
            for saved in checkpoints.checkpoint_files(checkpoint):
                saved.unlink(missing_ok=True)
            summaries.append(evaluation.summary)
            click.echo(
                f"{store}: {len(evaluation.per_image)} images -> {paths['summary'].parent}/",
                err=True,
            )
    if not world.is_main:
        return
    table = pd.concat(summaries, ignore_index=True)
    settings_text = ", ".join(f"{k}={v}" for k, v in settings.to_dict().items() if k != "name")
    click.echo(f"\nProtocol {settings.name} ({settings_text}).")
    click.echo("Mean [95% percentile bootstrap CI] over images (t-interval in the summary CSV);")
    click.echo("avg_drop and increase in %.\n")
    click.echo(summary_markdown(summary_wide(table)))


def _number(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a number", param_hint=option) from None
    return int(value) if value.is_integer() else value
