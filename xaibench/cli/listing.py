"""`xaibench list models|methods|metrics`."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import click

from xaibench.cli.errors import flag_text
from xaibench.cli.options import input_size_option, own_model
from xaibench.core.errors import XaibenchError
from xaibench.core.lazy import load

if TYPE_CHECKING:
    from xaibench.methods.support import Finding, ModelSupport

_REGISTRIES = {
    "models": "xaibench.models:MODELS",
    "methods": "xaibench.methods:METHODS",
    "metrics": "xaibench.metrics:METRICS",
}
"""What `list` prints -> where its registry lives, imported when it is listed."""
_COLUMNS = (
    ("T-Grad/FullGrad", "bias_terms"),
    ("guided", "relu_modules"),
    ("attention", "class_attention"),
    ("CAM layer", "cam_layer"),
)
"""(title, requirement) per column; the CAM layer, whose names can be long, comes last."""
_CELL = len("partial")
"""The widest status a cell shows."""
_SHORT = {"yes": "exact", "approximate": "approx"}
TIMM_SUPPORT_LIMIT = 100
"""The most timm models one `list models` inspects (about 0.3 s each); more ask for a pattern."""


@click.command("list")
@click.argument("what", type=click.Choice(sorted(_REGISTRIES)))
@click.argument("pattern", default="*")
@click.option(
    "--why",
    is_flag=True,
    help="Models: for each matching model, every method's support and the reason.",
)
@click.option(
    "--support/--no-support",
    default=True,
    show_default=True,
    help="Models: inspect each model's structure (about 0.2 s a model) or print the names only.",
)
@click.option(
    "--weights",
    default="none",
    show_default=True,
    help="Models: inspect the architecture (none, on the meta device, no weights allocated; a "
    "module:callable model as its callable builds it), or load these weights first (default, a "
    "weights name, a path to a state dict), which can change the structure.",
)
@input_size_option
def list_command(
    what: str,
    pattern: str,
    why: bool,
    support: bool,
    weights: str,
    input_size: tuple[int, ...] | None,
) -> None:
    """Print the available models, methods or metrics (PATTERN: a wildcard such as 'resnet*').

    \b
    For models, one line each with what the model offers:
      T-Grad/FullGrad  exact: built from linear pieces, input + bias terms = the score;
                       approx: other pieces (SiLU, ReLU6, gating, LayerNorm) make it approximate;
                       no: attention, or batch-norm without running statistics
      guided           guided backprop / DeconvNet: yes, partial (other activations are not
                       rectified) or no (no nn.ReLU module runs)
      attention        attention rollout / gradient-weighted attention: yes where every
                       attention layer attends over a class token and the patches (ViT, DeiT)
      CAM layer        the layer CAM methods read by default: a CNN's last feature map, Swin's
                       final grid, a ViT's last attention input (its tokens on the patch grid);
                       '-': none
    Every other method (gradients, SmoothGrad, Integrated Gradients, RISE, baselines) runs on
    every model. Support is read off the model's structure, never off its name. timm's models
    (with timm installed) are listed by a pattern starting timm/, the Hugging Face image
    classifiers in the local hub cache (with transformers installed) by one starting hf/. A model
    of your own, module:callable as --model takes it, is built by its callable and inspected at
    --input-size.

    \b
    Methods of other libraries are listed as one family each (captum.CLASS, gradcam-lib.CLASS);
    a pattern with the family's prefix lists its classes (imports the library):
      xaibench list methods 'captum.*'
      xaibench list methods 'gradcam-lib.*CAM'

    \b
      xaibench list models 'mobilenet*'
      xaibench list models vit_b_16 --why
      xaibench list models 'timm/resnet*'
      xaibench list models 'hf/*'
      xaibench list models my_package.models:build --input-size 64 --why
    """
    if what == "models":
        size = own_model(None, None, input_size, None)["input_size"]
        _list_models(pattern, why, support, weights, size)
        return
    registry = load(_REGISTRIES[what])
    names = registry.names(pattern)
    lines = [(name, registry.entry(name).help) for name in names]
    lines += [(family.placeholder, family.help) for family in registry.families(pattern)]
    width = max((len(name) for name, _ in lines), default=0)
    for name, help in lines:
        click.echo(f"{name:<{width}}  {flag_text(help)}".rstrip())


def _list_models(
    pattern: str, why: bool, support: bool, weights: str, size: tuple[int, int] | int | None
) -> None:
    from xaibench.models.factory import is_user_model, list_model_names, model_help
    from xaibench.models.timm_models import is_timm_name

    if is_user_model(pattern):
        _list_user_model(pattern, why, support, weights, size)
        return
    if size is not None:
        raise click.BadParameter(
            f"{pattern!r} names registered, timm or Hugging Face models, which state their own "
            "input size; it sizes a model of your own (module:callable)",
            param_hint="--input-size",
        )
    timm = is_timm_name(pattern)
    names = list_model_names(pattern)
    if not names:
        click.echo(_no_model(pattern))
        return
    width = max((len(n) for n in names), default=0)
    if support and timm and len(names) > TIMM_SUPPORT_LIMIT:
        raise click.UsageError(
            f"{pattern!r} matches {len(names)} timm models, and inspecting each takes about "
            f"0.3 s; narrow the pattern to at most {TIMM_SUPPORT_LIMIT} (e.g. 'timm/resnet*'), "
            "or list their names with --no-support"
        )
    if not support:
        for name in names:
            click.echo(f"{name:<{width}}  {flag_text(model_help(name))}".rstrip())
        if pattern == "*":
            _family_notes()
        return
    width = max((len(n) for n in names), default=0)
    from xaibench.methods.support import support_by_name

    if not why:
        click.echo(_header(width))
    for name in names:
        found = support_by_name(name, weights)
        click.echo(_reasons(name, found) if why else _row(name, found, width))
    if not why and names:
        click.echo("Reasons per method: xaibench list models NAME --why")
    if pattern == "*":
        _family_notes()


def _list_user_model(
    name: str, why: bool, support: bool, weights: str, size: tuple[int, int] | int | None
) -> None:
    """The support line (or, with `why`, the reasons) of the user's `module:callable` model,
    built as every command builds it (`load_model`) at `size` (default 224 x 224)."""
    if not support:
        click.echo(f"{name}  a model of your own (module:callable)")
        return
    from xaibench.methods.support import support_by_name

    try:
        found = support_by_name(name, weights, input_size=size)
    except XaibenchError as error:
        if error.param == "model":  # PATTERN names it here, not a --model
            error.param = None
        raise
    if why:
        click.echo(_reasons(name, found))
        return
    click.echo(_header(len(name)))
    click.echo(_row(name, found, len(name)))
    click.echo("Reasons per method: xaibench list models NAME --why")


def _header(width: int) -> str:
    titles = [f"{title:<{max(len(title), _CELL)}}" for title, _ in _COLUMNS]
    return "  ".join([f"{'model':<{width}}", "input", *titles]).rstrip()


def _no_model(pattern: str) -> str:
    """What to say when no model matches `pattern`, and where the models it may mean are."""
    from xaibench.models.hf_models import is_hf_name
    from xaibench.models.timm_models import is_timm_name

    said = f"no model matches {pattern!r}"
    if is_hf_name(pattern):
        from huggingface_hub import constants

        return (
            f"{said} among the Hugging Face image classifiers in the hub cache "
            f"({constants.HF_HUB_CACHE}); `hf download ORG/NAME` puts one there, and a "
            "save_pretrained folder is named as hf/PATH"
        )
    if is_timm_name(pattern):
        return f"{said} among timm's models; names are as timm.list_models() gives them"
    return (
        f"{said}; `xaibench list models` lists the registered ones, timm/NAME and hf/MODEL_ID "
        "name timm's and Hugging Face's"
    )


def _family_notes() -> None:
    """The last lines of the whole listing: how many Hugging Face classifiers the hub cache holds
    and how many timm models there are, and how to list them (or what to install)."""
    from importlib.util import find_spec

    if find_spec("transformers") is None:
        click.echo(
            "Hugging Face classifiers (hf/MODEL_ID) need transformers: pip install 'xaibench[hf]'"
        )
    else:
        from xaibench.models.hf_models import hf_names

        click.echo(
            f"Hugging Face classifiers, hf/MODEL_ID: {len(hf_names())} in the local hub cache "
            "(list them: xaibench list models 'hf/*'), or a save_pretrained folder"
        )
    if find_spec("timm") is None:
        click.echo("timm's models (timm/NAME) need timm: pip install 'xaibench[timm]'")
        return
    from xaibench.models.timm_models import timm_names

    click.echo(
        f"and {len(timm_names())} timm models, timm/NAME: list them by a pattern, "
        "e.g. xaibench list models 'timm/resnet*'"
    )


def _row(name: str, found: ModelSupport, width: int) -> str:
    h, w = found.input_size
    cells = [f"{name:<{width}}", f"{h if h == w else f'{h}x{w}':<5}"]
    cells += [f"{_cell(found, key):<{max(len(title), _CELL)}}" for title, key in _COLUMNS]
    return "  ".join(cells).rstrip()


def _cell(found: ModelSupport, key: str) -> str:
    if key == "cam_layer":
        return found.cam_layer or "-"
    status = found.findings[key].status
    return _SHORT.get(status, status) if key == "bias_terms" else status


def _reasons(name: str, found: ModelSupport) -> str:
    """The model's methods grouped by identical support, each group with its reason."""
    groups: dict[Finding, list[str]] = {}
    for method, finding in found.methods().items():
        groups.setdefault(finding, []).append(method)
    h, w = found.input_size
    lines = [f"{name} (input {h}x{w})"]
    for finding, methods in sorted(groups.items(), key=lambda item: item[0].status != "yes"):
        lines.append(_wrap(f"{finding.status:<11}  {', '.join(methods)}", "  ", " " * 15))
        if finding.reason:
            lines.append(_wrap(flag_text(finding.reason), " " * 15, " " * 15))
    return "\n".join(lines)


def _wrap(text: str, first: str, rest: str) -> str:
    return textwrap.fill(text, 100, initial_indent=first, subsequent_indent=rest)
