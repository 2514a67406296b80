"""Options shared by several commands, declared once."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from xaibench.core.atomic import writable_folder
from xaibench.core.checks import url_problem
from xaibench.core.choices import (
    BOOTSTRAP_RESAMPLES,
    PRECISION_CHOICES,
    PREPROCESSINGS,
    PROTOCOL_SETTINGS,
)
from xaibench.core.errors import ConfigError
from xaibench.core.lazy import load
from xaibench.results.layout import STORE_FORMATS
from xaibench.store.meta import TARGETS


class FiniteFloat(click.FloatRange):
    """A float option, in an optional range as `click.FloatRange`'s, that refuses NaN and
    infinities (which pass a range check: every comparison with NaN is false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = click.types.FloatParamType.convert(self, value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; give a number such as 0.5", param, ctx)
        return super().convert(number, param, ctx)


class OutFolder(click.Path):
    """An output folder: a path that is not a file, in a folder files can be written to (checked
    when the option is read, before any work; nothing is created)."""

    def __init__(self) -> None:
        super().__init__(path_type=Path, file_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if Path(value).is_file():
            self.fail(f"{value} is a file; give a folder", param, ctx)
        return _writable(self, super().convert(value, param, ctx), param, ctx)


class OutFile(click.Path):
    """An output file: a path that is not a folder, in a folder files can be written to."""

    def __init__(self) -> None:
        super().__init__(path_type=Path, dir_okay=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        _writable(self, path.parent, param, ctx)
        return path


def _writable(
    kind: click.ParamType, path: Path, param: click.Parameter | None, ctx: click.Context | None
) -> Path:
    """`path` when `writable_folder` accepts it, else the option's usage error."""
    try:
        return writable_folder(path)
    except ConfigError as error:
        kind.fail(error.message, param, ctx)


seed_type = click.IntRange(min=0)
"""A seed: an integer >= 0 (the generators take no negative seed)."""


def url(_ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A callback refusing text that is not a URL the downloader can open (None passes)."""
    problem = None if value is None else url_problem(value)
    if problem:
        raise click.BadParameter(problem, param=param)
    return value


def comma_list(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()] if value else []


def numbers(count: tuple[int, ...], kind: type = float) -> Callable:
    """A callback reading the option as comma-separated numbers of `kind`, as many as one of
    `count` says; None when the option is not given."""

    def read(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple | None:
        if value is None:
            return None
        try:
            values = tuple(kind(item) for item in comma_list(ctx, param, value))
        except ValueError:
            values = ()
        if not all(math.isfinite(v) for v in values):
            raise click.BadParameter(f"{value!r}: give finite numbers, not nan or inf", ctx, param)
        if len(values) not in count:
            wanted = " or ".join(str(n) for n in count)
            raise click.BadParameter(
                f"{value!r}: give {wanted} comma-separated numbers", ctx, param
            )
        return values

    return read


def registered_names(registry: str, what: str) -> Callable:
    """A callback reading the option as comma-separated names, at least one, each registered in
    `registry` ("module:attribute", imported when the option is used, not for --help)."""

    def check(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
        names = comma_list(ctx, param, value)
        if not names:
            raise click.BadParameter(f"give at least one {what}", ctx, param)
        known = load(registry)
        for name in names:
            known.get(name, param=param.name)  # naming close names: one line from `main`
        return names

    return check


method_list = registered_names("xaibench.methods:METHODS", "method")
"""--saliency: registered method names."""
metric_list = registered_names("xaibench.metrics:METRICS", "metric")
"""--metrics: registered metric names."""


def _compose(*decorators: Callable) -> Callable:
    def apply(function: Callable) -> Callable:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


model_option = click.option(
    "--model",
    required=True,
    help="Model name (see `xaibench list models`), timm/NAME (any timm model; "
    "timm/hf-hub:ORG/NAME too), hf/MODEL_ID (a Hugging Face image classifier: a hub repository "
    "in the local cache, optionally @REVISION, or a save_pretrained folder), or module:callable "
    "returning a torch.nn.Module.",
)
weights_option = click.option(
    "--weights",
    default="default",
    show_default=True,
    help="default (the model's pretrained weights; timm's and Hugging Face's from local files "
    "only), none "
    "(random init), a torchvision weights name such as IMAGENET1K_V2, or a path to a state dict "
    "(.safetensors, or loaded with weights_only=True).",
)
input_size_option = click.option(
    "--input-size",
    callback=numbers((1, 2), int),
    help="A module:callable model's input size: SIDE or H,W (default 224).",
)
"""--input-size: a model of the user's own's (`own_model` reads it as `load_model`'s)."""
own_model_options = _compose(
    click.option(
        "--mean",
        callback=numbers((3,)),
        help="A module:callable model's normalisation mean, R,G,B (default ImageNet's).",
    ),
    click.option(
        "--std",
        callback=numbers((3,)),
        help="A module:callable model's normalisation std, R,G,B (default ImageNet's).",
    ),
    input_size_option,
    click.option(
        "--crop",
        type=FiniteFloat(min=0, max=1, min_open=True),
        default=None,
        help="A module:callable model's own preprocessing (--preprocessing model): the fraction "
        "of the image its centre crop keeps, e.g. 0.875 (shorter side to input / crop first).",
    ),
)
"""What a model of the user's own states about itself (`load_model`'s mean, std, input_size,
crop)."""
preprocessing_option = click.option(
    "--preprocessing",
    type=click.Choice(PREPROCESSINGS),
    default="protocol",
    show_default=True,
    help="protocol: the protocol's (direct resize to the input size, the model's mean and std); "
    "model: the weights' own (resize, centre crop, interpolation, mean and std of torchvision's "
    "weights.transforms() or timm's data config). Recorded in the stores.",
)


def own_model(
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    input_size: tuple[int, ...] | None,
    crop: float | None,
) -> dict:
    """The keywords of `load_model` that `own_model_options` set (None: not given)."""
    size = input_size[0] if input_size is not None and len(input_size) == 1 else input_size
    return {"mean": mean, "std": std, "input_size": size, "crop": crop}


device_options = _compose(
    click.option(
        "--cuda", is_flag=True, help="Run on the first CUDA device (same as --device cuda)."
    ),
    click.option("--device", default=None, help="cpu, cuda or cuda:N (overrides --cuda)."),
)
workers_option = click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Image decoding worker processes (default: 0 on CPU, where decoding is not the "
    "bottleneck and workers take cores from the model; 4 on CUDA, so the GPU does not wait).",
)
data_options = _compose(
    click.option(
        "--data",
        "data_dir",
        required=True,
        type=click.Path(path_type=Path),
        help="Image folder: class sub-folders named by WNID, or a flat folder with --labels.",
    ),
    click.option(
        "--labels",
        "labels_file",
        type=click.Path(path_type=Path),
        default=None,
        help="Labels file for a flat folder: `ILSVRC2012_val_00000001.JPEG 065 n01751748` lines.",
    ),
    click.option(
        "--subset",
        "subset_file",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Use only the images listed in FILE (first column), e.g. a subset written by "
        "`xaibench download --subset`.",
    ),
    click.option(
        "--limit", type=click.IntRange(min=1), default=None, help="Use the first N images."
    ),
    workers_option,
)
batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per batch (default: 8 on CPU, 64 on CUDA).",
)
protocol_option = click.option(
    "--protocol",
    type=click.Choice(list(PROTOCOL_SETTINGS)),
    default="polycam",
    show_default=True,
    help="Preprocessing and metric protocol (see docs: substrates, steps, AUC rule).",
)
saliency_option = click.option(
    "--saliency",
    "methods",
    required=True,
    callback=method_list,
    help="Method name(s), comma-separated (see `xaibench list methods`), e.g. tgrad,gradcam; "
    "captum.CLASS and gradcam-lib.CLASS run a class of Captum or pytorch-grad-cam "
    "(docs/adapters.md), e.g. captum.IntegratedGradients,gradcam-lib.EigenGradCAM.",
)
method_param_option = click.option(
    "--param",
    "params",
    multiple=True,
    metavar="[METHOD.]KEY=VALUE",
    help="A method setting, e.g. rise.masks=8000, smoothgrad.base=gradinput or "
    "captum.Occlusion.sliding_window_shapes=[3,16,16]; without METHOD. it "
    "goes to every chosen method that takes KEY. VALUE is read as JSON when it parses, else as text "
    "(a layer is always a module name, kept as text). Repeatable.",
)
cam_layer_option = click.option(
    "--layer",
    default=None,
    help="Target layer for CAM methods (a module name, e.g. features.28); default: found "
    "automatically.",
)
speed_options = _compose(
    click.option(
        "--precision",
        type=click.Choice(PRECISION_CHOICES),
        default="auto",
        show_default=True,
        help="Forward precision: auto (tf32 on CUDA, as PyTorch's convolutions default to; fp32 "
        "elsewhere); fp32 (IEEE float32); tf32 (TF32 matmuls and convolutions on CUDA, same as "
        "fp32 on CPU); bf16 or fp16 autocast (fp16 needs CUDA). The precision used is recorded.",
    ),
    click.option(
        "--compile",
        "compile_model",
        is_flag=True,
        help="torch.compile the model's forward (needs a C++ compiler on CPU). Calls made while a "
        "method has hooks on the model (T-Grad, CAMs, FullGrad, guided backprop) run eagerly.",
    ),
    click.option(
        "--deterministic",
        is_flag=True,
        help="Deterministic algorithms only (torch.use_deterministic_algorithms, cuDNN's "
        "deterministic convolutions, CUBLAS_WORKSPACE_CONFIG=:4096:8 unless set): repeated GPU "
        "runs give the same bits; an op without a deterministic version is an error.",
    ),
)
resamples_option = click.option(
    "--resamples",
    type=click.IntRange(min=100),
    default=BOOTSTRAP_RESAMPLES,
    show_default=True,
    help="Bootstrap resamples per interval.",
)
target_option = click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="predicted",
    show_default=True,
    help="Class to explain: the model's top-1 prediction or the ground-truth label.",
)
store_format_option = click.option(
    "--store",
    "store_format",
    type=click.Choice(STORE_FORMATS),
    default="h5",
    show_default=True,
    help="HDF5 store, or an npz the T-Grad authors' evaluation scripts can read.",
)
