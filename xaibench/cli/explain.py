"""`xaibench explain`: one image, its top classes and every method's map, as one PNG."""

from __future__ import annotations

from pathlib import Path

import click

from xaibench.cli.options import (
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
    type=click.Path(path_type=Path, dir_okay=False),
    default=Path("explain.png"),
    show_default=True,
    help="PNG to write.",
)
@click.option(
    "--tgrad-layers",
    is_flag=True,
    help="Also draw T-Grad's per-term maps (input and each bias layer) and their weights.",
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
    layer: str | None,
    params: tuple[str, ...],
    protocol: str,
    cuda: bool,
    device: str | None,
) -> None:
    """Explain IMAGE: the image as the model sees it, the model's top-5 classes with their
    probabilities, and each method's map of the top-1 class overlaid, side by side.

    \b
    Example:
      xaibench explain cat.jpg --model efficientnet_lite0 --saliency tgrad,gradcam --tgrad-layers
    """
    from xaibench.methods.settings import method_params
    from xaibench.models import load_model
    from xaibench.pipelines.explain import explain_image
    from xaibench.report.explain import explanation_figure
    from xaibench.report.plots import figure_png

    settings = method_params(methods, params, layer)  # before the model: a bad --param fails fast
    loaded = load_model(model, weights)
    result = explain_image(
        image,
        loaded,
        methods,
        device=resolve_device(device, cuda),
        protocol=protocol,
        method_params=settings,
        tgrad_layers=tgrad_layers,
    )
    write_bytes_atomic(out_file, figure_png(explanation_figure(result)))
    best = result.top[0]
    click.echo(f"{image}: {best[1]} ({best[0]}) p={best[2]:.3f} -> {out_file}")
