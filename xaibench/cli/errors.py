"""Errors as the CLI prints them: library parameters become the flags that set them.

The library names parameters (`ConfigError(..., param="boxes")`, "pass `boxes`"); `FLAGS` is the
one place that knows which flag sets which parameter. Click's usage errors are written in the
same "error: --flag: message" form. Imports no torch: `xaibench --help` stays light.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import click

from xaibench.core.errors import XaibenchError

FLAGS: dict[str, str] = {
    "allow_incomplete": "--allow-incomplete",
    "blur_every": "--blur-every",
    "boxes": "--boxes",
    "compile": "--compile",
    "compression": "--compression",
    "crop": "--crop",
    "data_dir": "--data",
    "deterministic": "--deterministic",
    "device": "--device",
    "expected_sha256": "--sha256",
    "h5_ids": "--h5-ids",
    "h5_maps": "--h5-maps",
    "archives": "--archive",
    "given": "--archive",
    "input_size": "--input-size",
    "interval": "--interval",
    "labels": "--labels",
    "labels_file": "--labels",
    "layer": "--layer",
    "layers": "--layer",
    "limit": "--limit",
    "mean": "--mean",
    "mc_dropout": "--mc-dropout",
    "name": "--name",
    "methods": "--saliency",
    "method": "--method",
    "metric_params": "--metric-param",
    "metrics": "--metrics",
    "model": "--model",
    "order": "--order",
    "out_dir": "--out",
    "parameterisation": "--param",
    "params": "--param",
    "precision": "--precision",
    "preprocessing": "--preprocessing",
    "road_percentages": "--road-percentages",
    "size": "--size",
    "skip_bad": "--skip-bad",
    "source": "--source",
    "std": "--std",
    "store_format": "--store",
    "stores": "--store",
    "subset_file": "--subset",
    "target": "--target",
    "tgrad_layers": "--tgrad-layers",
    "units": "--unit",
    "url_base": "--url-base",
    "weights": "--weights",
}
"""Library parameter (Python name) -> the CLI flag that sets it."""

NAMED = re.compile(r"`([A-Za-z_]\w*)`")
"""A backticked identifier: how a message names a parameter."""


def flag_text(text: str) -> str:
    """`text` with every backticked parameter of `FLAGS` written as its flag; other backticked
    text (a command such as `xaibench list methods`) is left as it is."""
    return NAMED.sub(lambda match: FLAGS.get(match[1], match[0]), text)


def error_text(error: XaibenchError) -> str:
    """The error for the terminal: "--flag: message" when it names a parameter, else the
    message, with the parameters it mentions as flags."""
    message = flag_text(error.message)
    return f"{FLAGS.get(error.param, error.param)}: {message}" if error.param else message


def usage_text(error: click.ClickException) -> str:
    """A click error in the same form: "--flag: message" for a parameter, else the message."""
    if isinstance(error, click.NoSuchOption):
        close = sorted(error.possibilities or [])
        return f"{error.option_name}: no such option" + (
            f"; did you mean {', '.join(close)}?" if close else ""
        )
    message = _sentence(error.message)
    if not isinstance(error, click.BadParameter):
        return message
    if isinstance(error, click.MissingParameter):
        extra = (
            error.param.type.get_missing_message(error.param, error.ctx) if error.param else None
        )
        message = "; ".join([message or "required", *([_sentence(extra)] if extra else [])])
    hint = _hint(error)
    return f"{hint}: {message}" if hint else message


def _sentence(text: str) -> str:
    """Click's message on one line, lower-case first, without the full stop."""
    text = " ".join(text.split())
    return (text[:1].lower() + text[1:]).removesuffix(".")


def _hint(error: click.BadParameter) -> str | None:
    """The parameter as the user typed it: `--batch-size`, or an argument's metavar (`DATASET`)."""
    hint: str | Sequence[str] | None = error.param_hint
    if hint is None and error.param is not None:
        param = error.param
        hint = param.opts if isinstance(param, click.Option) else param.human_readable_name
    return hint if hint is None or isinstance(hint, str) else " / ".join(hint)
