"""`xaibench visualize` (feature visualisation) and `xaibench activations` (layer feature maps)."""

from __future__ import annotations

from pathlib import Path

import click

from xaibench.cli.options import (
    FiniteFloat,
    OutFolder,
    device_options,
    model_option,
    seed_type,
    weights_option,
)
from xaibench.core.choices import CHANNEL_ORDERS, PARAMETERISATION_NAMES
from xaibench.core.runtime import prepare_model, resolve_device
from xaibench.data.classes import imagenet_classes

out_option = click.option(
    "--out",
    "out_dir",
    type=OutFolder(),
    required=True,
    help="Folder for the PNG files (created if missing).",
)


_POSITIVE = FiniteFloat(min=0, min_open=True)


def _setting(name: str, kind: click.ParamType, default: float, help: str):
    return click.option(name, type=kind, default=default, show_default=True, help=help)


@click.command("visualize")
@model_option
@weights_option
@click.option(
    "--unit",
    "units",
    required=True,
    multiple=True,
    help="LAYER:CHANNEL to maximise, e.g. features.28:9 (mean of a conv channel) or "
    "classifier.6:1 (one output of a Linear: a class logit); repeat for several, one image each.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Optimisation steps per image.",
)
@click.option(
    "--param",
    "parameterisation",
    type=click.Choice(sorted(PARAMETERISATION_NAMES)),
    default="fourier",
    show_default=True,
    help="pixel: optimise the pixels; fourier: decorrelated colours in a 1/f Fourier basis.",
)
@click.option(
    "--lr", type=_POSITIVE, default=None, help="Adam step size (default: 0.1 fourier, 0.05 pixel)."
)
@click.option(
    "--size",
    type=click.IntRange(min=16),
    default=None,
    help="Image side (default: the model's input size).",
)
@_setting("--jitter", FiniteFloat(min=0), 8.0, "Maximum random shift per step, pixels.")
@_setting("--rotate", FiniteFloat(min=0), 5.0, "Maximum random rotation per step, degrees.")
@_setting("--scale", FiniteFloat(0, 0.9), 0.05, "Random scaling per step in [1 - s, 1 + s].")
@_setting("--blur-every", click.IntRange(min=0), 4, "Gaussian blur every k steps (0: never).")
@_setting("--blur-sigma", _POSITIVE, 0.5, "Blur standard deviation, pixels.")
@click.option(
    "--seed",
    type=seed_type,
    default=0,
    show_default=True,
    help="Seed of the starting image and the random jitter, rotation and scaling.",
)
@device_options
@out_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
def visualize_command(
    model: str,
    weights: str,
    units: tuple[str, ...],
    steps: int,
    parameterisation: str,
    lr: float | None,
    size: int | None,
    jitter: float,
    rotate: float,
    scale: float,
    blur_every: int,
    blur_sigma: float,
    seed: int,
    cuda: bool,
    device: str | None,
    out_dir: Path,
    quiet: bool,
) -> None:
    """Feature visualisation: optimise one image per unit, from noise, to maximise the unit.

    Writes OUT/UNIT.png per unit and OUT/grid.png, and prints each unit's final activation; for a
    class logit also the model's probability of that class on the final image.
    """
    from xaibench.models import load_model
    from xaibench.visualize import RandomTransforms, labelled_grid, save_png, visualise_units

    chosen = resolve_device(device, cuda)
    loaded = load_model(model, weights)
    network = prepare_model(loaded.model, chosen)
    result = visualise_units(
        network,
        units,
        mean=loaded.mean,
        std=loaded.std,
        size=(size, size) if size else loaded.input_size,
        steps=steps,
        parameterisation=parameterisation,
        lr=lr,
        transforms=RandomTransforms(jitter, rotate, scale),
        blur_every=blur_every,
        blur_sigma=blur_sigma,
        seed=seed,
        device=chosen,
        progress=not quiet,
    )
    names = [str(unit) for unit in result.units]
    for name, image in zip(names, result.images, strict=True):
        save_png(image, out_dir / f"{name.replace(':', '_')}.png")
    save_png(labelled_grid(result.images, names), out_dir / "grid.png")
    classes = imagenet_classes()
    for n, name in enumerate(names):
        line = f"{name}: activation {result.activations[n]:.3f}"
        if result.is_class[n]:
            line += f", p(class {result.units[n].channel}) = {result.class_probability[n]:.4f}"
        top1 = int(result.top1[n])
        name = classes.short_name(top1)
        line += f"; top-1 {top1}{' ' + name if name else ''} ({result.top1_probability[n]:.4f})"
        click.echo(line)
    click.echo(f"{len(names)} image(s) -> {out_dir}/", err=True)


@click.command("activations")
@click.argument("image", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@model_option
@weights_option
@click.option(
    "--layer",
    "layers",
    required=True,
    multiple=True,
    help="Layer name (repeat for several), e.g. features.28.",
)
@click.option(
    "--channels",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Channels shown per layer.",
)
@click.option(
    "--order",
    type=click.Choice(CHANNEL_ORDERS),
    default="top",
    show_default=True,
    help="top: the channels with the largest mean activation; first: channels 0..N-1.",
)
@device_options
@out_option
def activations_command(
    image: Path,
    model: str,
    weights: str,
    layers: tuple[str, ...],
    channels: int,
    order: str,
    cuda: bool,
    device: str | None,
    out_dir: Path,
) -> None:
    """Feature maps of chosen layers for one IMAGE, one grid per layer (OUT/LAYER.png), from one
    forward pass; each tile is titled with its channel index and range, on one colour scale with
    a colour bar."""
    from xaibench.data.dataset import read_image
    from xaibench.metrics import get_protocol
    from xaibench.models import load_model
    from xaibench.visualize import activation_figure, choose_channels, layer_activations, save_png

    chosen = resolve_device(device, cuda)
    loaded = load_model(model, weights)
    network = prepare_model(loaded.model, chosen)
    preprocess = get_protocol("polycam").preprocess(loaded.mean, loaded.std, loaded.input_size)
    batch = preprocess(read_image(Path(image), "give a JPEG or PNG file"))[None].to(chosen)
    maps = layer_activations(network, batch, layers)
    for name, value in maps.items():
        shown = choose_channels(value[0], channels, order)
        figure = activation_figure(value[0], shown, f"{name} {tuple(value.shape[1:])}")
        path = save_png(figure, out_dir / f"{name}.png")
        click.echo(f"{name}: {tuple(value.shape[1:])} -> {path} (channels {shown.tolist()})")
