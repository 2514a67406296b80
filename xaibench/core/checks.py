"""Checks of settings, shared by every package; each error names the setting."""

from __future__ import annotations

from xaibench.core.errors import ConfigError


def positive_int(value: object, name: str) -> int:
    """`value` if it is an integer of at least 1 (a bool is not), else a ConfigError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value
