"""`xaibench explain`: one image, its top classes and every method's map, as one PNG."""

from __future__ import annotations

from pathlib import Path

import click

from xaibench.cli.options import (
    OutFile,
    cam_layer_option,
    device_options,
    method_param_option,
    model_option,
    protocol_option,
    saliency_option,
    weights_option,
)
from xaibench.core.atomic import write_bytes_atomic
from xaibench.core.runtime import resolve_device


@click.command("explain")
@click.argument("image", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@model_option
@weights_option
@saliency_option
@click.option(
    "--out",
    "out_file",
    type=OutFile(),
    default=Path("explain.png"),
    show_default=True,
    help="PNG to write.",
)
@click.option(
    "--tgrad-layers",
    is_flag=True,
    help="Also draw T-Grad's per-term maps (input and each bias layer) and their weights.",
)
@click.option(
    "--target",
    default="predicted",
    show_default=True,
    metavar="predicted|label|CLASS",
    help="Class the maps explain: the model's top-1, the label the image's class folder (a "
    "WNID such as n02123045) names, or a class given by index (281), WNID or name ('tabby').",
)
@cam_layer_option
@method_param_option
@protocol_option
@device_options
def explain_command(
    image: Path,
    model: str,
    weights: str,
    methods: list[str],
    out_file: Path,
    tgrad_layers: bool,
    target: str,
    layer: str | None,
    params: tuple[str, ...],
    protocol: str,
    cuda: bool,
    device: str | None,
) -> None:
    """Explain IMAGE: the image as the model sees it, the model's top-5 classes with their
    probabilities, and each method's map of one class (the top-1 unless --target says otherwise)
    overlaid, side by side.

    \b
    Examples:
      xaibench explain cat.jpg --model efficientnet_lite0 --saliency tgrad,gradcam --tgrad-layers
      xaibench explain cat.jpg --model efficientnet_lite0 --saliency gradcam --target 'tiger cat'
    """
    from xaibench.methods.settings import method_params
    from xaibench.models import load_model
    from xaibench.pipelines.explain import explain_image, explained_class
    from xaibench.report.explain import explanation_figure
    from xaibench.report.plots import figure_png

    settings = method_params(methods, params, layer)  # before the model: a bad --param fails fast
    explained_class(target, image)
    loaded = load_model(model, weights)
    result = explain_image(
        image,
        loaded,
        methods,
        device=resolve_device(device, cuda),
        protocol=protocol,
        method_params=settings,
        tgrad_layers=tgrad_layers,
        target=target,
    )
    write_bytes_atomic(out_file, figure_png(explanation_figure(result)))
    best = result.top[0]
    line = f"{image}: {best[1]} ({best[0]}) p={best[2]:.3f}"
    if result.target[0] != best[0]:
        index, name, probability = result.target
        line += f"; maps of {name} ({index}) p={probability:.3f}"
    click.echo(f"{line} -> {out_file}")
