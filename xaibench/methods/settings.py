"""Methods' settings from text: `[METHOD.]KEY=VALUE` pairs checked against each method's constructor."""

from __future__ import annotations

import json

from xaibench.core.errors import ConfigError
from xaibench.methods.base import METHODS


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
        value = text if key == "layer" else _json_or_text(text)
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
        METHODS.get(m).full_settings(chosen[m])  # a required setting left out
    return {m: p for m, p in chosen.items() if p}


def _json_or_text(text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
