"""`xaibench evaluate`: faithfulness metrics of one or more stores into tables."""

from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

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
from xaibench.data.dataset import ImageFolderDataset
from xaibench.evaluate import evaluate_store, write_evaluation
from xaibench.metrics import METRICS, get_protocol, summary_markdown
from xaibench.metrics.stats import summary_wide
from xaibench.models import load_model, protocol_preprocess
from xaibench.runtime import default_batch_size, default_workers, resolve_device

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
    "--allow-incomplete",
    is_flag=True,
    help="Evaluate the finished rows of a store whose generation is not complete.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def evaluate_command(
    model: str,
    weights: str,
    stores: tuple[Path, ...],
    data_dir: Path,
    labels_file: Path | None,
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
    allow_incomplete: bool,
    quiet: bool,
) -> None:
    """Score saliency stores with Insertion, Deletion, Ins-Del, Average Drop % and % Increase in
    Confidence, batched over images and perturbation steps.

    Writes per image a CSV (Parquet too when pyarrow is installed), the curves (npz) and a summary
    (count, mean, 95% CI) per metric, and prints the summary as Markdown. Every output records the
    protocol and its settings.
    """
    if not metrics:
        raise click.BadParameter("give at least one metric", param_hint="--metrics")
    for name in metrics:
        METRICS.get(name)
    destinations = [out_dir or store.parent / "metrics" for store in stores]
    outputs = [(d.resolve(), s.stem) for d, s in zip(destinations, stores, strict=True)]
    if len(set(outputs)) != len(outputs):
        raise click.BadParameter(
            "two stores would write the same tables (same method name and output folder); "
            "evaluate them separately with different --out folders",
            param_hint="--store",
        )
    chosen = resolve_device(device, cuda)
    settings = get_protocol(protocol, **({"step": step} if step else {}))
    loaded = load_model(model, weights)
    preprocess = protocol_preprocess(protocol, loaded.mean, loaded.std, loaded.input_size)
    dataset = ImageFolderDataset(data_dir, preprocess, labels_file=labels_file)
    summaries = []
    for store, destination in zip(stores, destinations, strict=True):
        checkpoint = destination / f".{store.stem}-{settings.name}.checkpoint.npz"
        evaluation = evaluate_store(
            store,
            loaded,
            dataset,
            settings,
            metrics,
            device=chosen,
            batch_size=batch_size or default_batch_size(chosen),
            chunk_size=chunk_size,
            workers=default_workers(chosen) if workers is None else workers,
            limit=limit,
            allow_incomplete=allow_incomplete,
            checkpoint=checkpoint,
            precision=precision,
            compile=compile_model,
            progress=not quiet,
        )
        paths = write_evaluation(evaluation, destination)
        checkpoint.unlink(missing_ok=True)
        summaries.append(evaluation.summary)
        click.echo(
            f"{store}: {len(evaluation.per_image)} images -> {paths['summary'].parent}/", err=True
        )
    table = pd.concat(summaries, ignore_index=True)
    settings_text = ", ".join(f"{k}={v}" for k, v in settings.to_dict().items() if k != "name")
    click.echo(f"\nProtocol {settings.name} ({settings_text}); mean [95% CI] over images;")
    click.echo("avg_drop and increase in %.\n")
    click.echo(summary_markdown(summary_wide(table)))
