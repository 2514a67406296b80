"""`xaibench verify`: class counts, undecodable images and a label-mapping check by accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from xaibench.cli.options import (
    batch_size_option,
    device_options,
    seed_type,
    weights_option,
    workers_option,
)
from xaibench.core.runtime import resolve_device

if TYPE_CHECKING:
    from xaibench.pipelines.verify import AccuracyCheck, VerifyReport


@click.command("verify")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option(
    "--expect-per-class",
    type=click.IntRange(min=1),
    default=None,
    help="Images expected in every class (default: from the index, 50 for imagenet-val).",
)
@click.option(
    "--model",
    default=None,
    help="Also check the labels: this model's top-1 on a sample against its published accuracy.",
)
@weights_option
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Images for the accuracy check (stratified by class when >= 1000).",
)
@click.option("--seed", type=seed_type, default=0, show_default=True, help="Seed of the sample.")
@device_options
@batch_size_option
@workers_option
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.pass_context
def verify_command(
    ctx: click.Context,
    folder: Path,
    expect_per_class: int | None,
    model: str | None,
    weights: str,
    sample: int,
    seed: int,
    cuda: bool,
    device: str | None,
    batch_size: int | None,
    workers: int | None,
    quiet: bool,
) -> None:
    """Check FOLDER (made by `xaibench download`, or a folder of WNID class folders): images per
    class, images that cannot be decoded, and with --model the top-1 accuracy on a sample, which
    flags a wrong label mapping. Exits with 1 when anything is off.
    """
    from xaibench.models import load_model
    from xaibench.pipelines.settings import RunSettings
    from xaibench.pipelines.verify import open_prepared, sample_accuracy, verify_dataset

    run = RunSettings.resolve(
        resolve_device(device, cuda), batch_size=batch_size, workers=workers, progress=not quiet
    )
    # The model first: a bad name or weights file fails before minutes of decoding.
    loaded = None if model is None else load_model(model, weights)
    prepared = open_prepared(folder)
    result = verify_dataset(prepared, run, expect_per_class)
    _print_report(result)
    if loaded is not None:
        result.accuracy = sample_accuracy(prepared, loaded, sample, run, seed)
        _print_accuracy(result.accuracy, model, loaded.weights)
    if not result.ok:
        ctx.exit(1)


def _print_report(result: VerifyReport) -> None:
    present = result.counts[result.counts > 0]
    click.echo(
        f"{result.root}: {int(result.counts.sum())} labelled images in {len(present)} classes "
        f"({present.min() if len(present) else 0} to {present.max() if len(present) else 0} "
        "per class)"
    )
    if result.expected_per_class is not None:
        off = result.deviations
        listed = ", ".join(f"{w} {n}" for w, n in list(off.items())[:10])
        click.echo(
            f"expected {result.expected_per_class} per class: "
            + (f"{len(off)} class(es) differ: {listed}" if off else "every class matches")
        )
    if result.missing:
        click.echo(f"missing images (listed in the index): {len(result.missing)}")
        for image_id in result.missing[:10]:
            click.echo(f"  {image_id}")
    if result.unlabelled:
        click.echo(f"images without a class: {result.unlabelled}")
    click.echo(f"unreadable images: {len(result.unreadable) or 'none'}")
    for image_id in result.unreadable:
        click.echo(f"  {image_id}")


def _print_accuracy(check: AccuracyCheck, model: str, weights: str) -> None:
    from xaibench.pipelines.verify import FLAG_LEVEL

    line = (
        f"top-1 of {model} ({weights}) on {check.images} images: {check.accuracy:.1f}% "
        f"(99% CI {check.low:.1f} to {check.high:.1f})"
    )
    if check.published is None:
        line += "; no published accuracy for these weights, so no verdict"
    elif check.wrong_mapping:
        line += (
            f"; published {check.published:.1f}%: far below (P = {check.p_value:.1e} < "
            f"{FLAG_LEVEL} of reaching half of it): the label mapping is likely wrong"
        )
    else:
        line += f"; published {check.published:.1f}%: consistent with the labels"
    click.echo(line)
