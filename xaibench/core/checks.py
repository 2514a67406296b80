"""Checks of settings, shared by every package; each error names the setting."""

from __future__ import annotations

import numbers

from xaibench.core.errors import ConfigError


def integer_at_least(value: object, name: str, least: int) -> int:
    """`value` if it is an integer (a bool is not) of at least `least`, else a ConfigError naming
    `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
        kind = "a positive integer" if least == 1 else f"an integer >= {least}"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return value


def positive_int(value: object, name: str) -> int:
    """`value` if it is an integer of at least 1 (a bool is not), else a ConfigError naming `name`."""
    return integer_at_least(value, name, 1)
