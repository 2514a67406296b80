"""Methods' settings from text: `[METHOD.]KEY=VALUE` pairs checked against each method's constructor."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping

from xaibench.core.checks import json_or_text
from xaibench.core.errors import ConfigError
from xaibench.methods.base import METHODS

KINDS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, int | float) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("text", lambda v: isinstance(v, str)),
    "None": ("null", lambda v: v is None),
}
"""A constructor annotation's simple type -> (what to give, the test of a value)."""
GIVEN = {
    str: "text",
    bool: "a boolean",
    int: "an integer",
    float: "a decimal number",
    list: "a list",
    dict: "an object",
}
"""What a value read from `KEY=VALUE` is, by its Python type."""


def method_params(
    methods: list[str], params: tuple[str, ...], layer: str | None = None
) -> dict[str, dict]:
    """`[METHOD.]KEY=VALUE` settings -> {method: {key: value}}, checked against each method's
    settings (`SaliencyMethod.setting_names`; a required one left out is an error too).

    VALUE is read as JSON where it parses, else kept as text; a layer is always a module name, kept
    as text (`features.28`, or `3` in a Sequential). `layer` is set for every chosen method that
    takes a layer and overrides a layer given in `params`.
    """
    accepted = {m: set(METHODS.get(m, param="methods").setting_names()) for m in methods}
    chosen: dict[str, dict] = {m: {} for m in methods}
    for setting in params:
        target, sep, text = setting.partition("=")
        if not sep:
            raise ConfigError(f"{setting!r}: write [METHOD.]KEY=VALUE", param="params")
        method, _, key = target.rpartition(".")
        value = text if key == "layer" else json_or_text(setting, text, "params")
        if method:
            if method not in chosen:
                raise ConfigError(
                    f"{setting!r}: {method} is not among `methods` {','.join(methods)}",
                    param="params",
                )
            if key not in accepted[method]:
                known = ", ".join(sorted(accepted[method])) or "none"
                raise ConfigError(
                    f"{setting!r}: {method} has no setting {key!r} (its settings: {known})",
                    param="params",
                )
            chosen[method][key] = value
            continue
        takers = [m for m in methods if key in accepted[m]]
        if not takers:
            raise ConfigError(
                f"{setting!r}: none of {', '.join(methods)} takes {key!r}", param="params"
            )
        for m in takers:
            chosen[m][key] = value
    if layer:
        takers = [m for m in methods if "layer" in accepted[m]]
        if not takers:
            raise ConfigError(f"{layer}: none of {', '.join(methods)} takes a layer", param="layer")
        for m in takers:
            chosen[m]["layer"] = layer
    for m in methods:
        check_types(m, chosen[m])
        METHODS.get(m).full_settings(chosen[m])  # a required setting left out
    return {m: p for m, p in chosen.items() if p}


def check_types(method: str, settings: Mapping[str, object]) -> None:
    """A ConfigError naming the method, the setting, the value and the type expected for a value
    that is not of the type the method's constructor declares (int, float, bool, str, None or a
    union of them; an int is a float too, a bool is neither). Other declared types are left to
    the method's own checks."""
    parameters = inspect.signature(METHODS.get(method)).parameters
    for key, value in settings.items():
        parameter = parameters.get(key)
        if parameter is None:
            continue
        annotation = parameter.annotation
        declared = (
            annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
        )
        kinds = [part.strip() for part in declared.split("|")]
        if not all(kind in KINDS for kind in kinds) or any(KINDS[k][1](value) for k in kinds):
            continue
        wanted = " or ".join(KINDS[kind][0] for kind in kinds)
        shown = value if isinstance(value, str) else json.dumps(value)
        raise ConfigError(
            f"{method}.{key}={shown}: {method}'s setting {key!r} takes {wanted}, not "
            f"{GIVEN.get(type(value), type(value).__name__)} {shown!r}",
            param="params",
        )
