"""Checks of settings, shared by every package; each error names the setting."""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from xaibench.core.errors import ConfigError

if TYPE_CHECKING:
    import torch


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


def json_or_text(setting: str, text: str, param: str) -> object:
    """`text`, the value of `setting` (`KEY=VALUE` as given), read as JSON where it parses, else
    kept as text; a ConfigError for `param` when the JSON holds NaN or an infinity (`NaN`,
    `Infinity`, `1e999`), which no setting takes."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    if not _all_finite(value):
        raise ConfigError(
            f"{setting!r}: {text} is not finite; give finite numbers (no NaN or Infinity)",
            param=param,
        )
    return value


def _all_finite(value: object) -> bool:
    """Whether every float in a JSON value (lists and objects looked into) is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_all_finite(item) for item in value)
    if isinstance(value, dict):
        return all(_all_finite(item) for item in value.values())
    return True


def device_memory(device: torch.device | str) -> int:
    """Bytes of memory of `device`: a CUDA device's total, else this machine's physical memory."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def fits_in_memory(
    need: int, device: torch.device | str, work: str, fix: str, param: str | None = None
) -> None:
    """A ConfigError (for `param`) when `need` bytes, the memory `work` takes, exceed what
    `device` holds (`device_memory`); `fix` says what to give instead."""
    have = device_memory(device)
    if need > have:
        where = "this machine" if str(device) == "cpu" else device
        raise ConfigError(
            f"{work} takes {need / 2**30:,.1f} GiB, more than the {have / 2**30:,.1f} GiB of "
            f"memory of {where}; {fix}",
            param=param,
        )


URL_SCHEMES = ("http", "https", "ftp", "file")
"""The schemes the downloader opens."""


def url_problem(value: str) -> str | None:
    """What makes `value` no URL the downloader can open, or None when it is one."""
    parsed = urlparse(value)
    opens = parsed.netloc if parsed.scheme in ("http", "https", "ftp") else parsed.path
    if parsed.scheme in URL_SCHEMES and opens and not any(c.isspace() for c in value):
        return None
    return (
        f"{value!r} is not a URL; give the server folder as http(s)://HOST/FOLDER "
        "(or file:///FOLDER)"
    )
