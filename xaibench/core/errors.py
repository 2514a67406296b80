"""Typed errors. Each message names the offending file or field and says how to fix it.

An error about a parameter names it as `param` (its Python name), and a message writes every
parameter it mentions in backticks, as in "pass `boxes`". Python users read parameter names only;
the CLI shows each as its flag (`xaibench.cli.errors`) and turns any `XaibenchError` into one
line on stderr and a non-zero exit.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class XaibenchError(Exception):
    """Base class of every error xaibench raises on purpose.

    `param` is the parameter at fault, if one is; `str(error)` is then "param: message".
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param

    def __str__(self) -> str:
        return f"{self.param}: {self.message}" if self.param else self.message


class ConfigError(XaibenchError):
    """An option, name or setting that cannot be used as given."""


class DataError(XaibenchError):
    """An image, labels file or dataset folder that cannot be read."""


class StoreError(XaibenchError):
    """A saliency store that is corrupt or does not match the run."""


class ModelError(XaibenchError):
    """A model or weights file that cannot be loaded."""


class UnknownNameError(ConfigError):
    """A registry lookup failed; the message lists the closest known names."""

    def __init__(
        self,
        kind: str,
        name: str,
        known: Iterable[str],
        *,
        param: str | None = None,
        listing: str | None = None,
    ) -> None:
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        listing = listing or f"{kind}s"
        super().__init__(
            f"unknown {kind} {name!r}.{hint} Run `xaibench list {listing}` to see all "
            f"{len(known)}.",
            param=param,
        )
        self.kind, self.name, self.close = kind, name, close


class ResultsError(XaibenchError):
    """Evaluation outputs (per-image tables, curves) that cannot be read or compared as asked."""


class OutOfMemory(XaibenchError):
    """Even a chunk of one item does not fit in the device's memory."""


class MainProcessError(XaibenchError):
    """Under torchrun: the work process 0 did alone failed, so the other processes stop too."""
