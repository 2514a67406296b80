"""What a saliency store records about the run that wrote it (docs/store-format.md)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

import xaibench
from xaibench.core.errors import ConfigError, StoreError

FORMAT = "xaibench.saliency"
FORMAT_VERSION = 1
TARGETS = ("predicted", "label")
JSON_FIELDS = ("method_params", "preprocess", "method_library")
# The fields that must agree for a store to be resumed or evaluated as the same run.
RUN_FIELDS = ("model", "weights", "method", "method_params", "target", "preprocess", "precision")
WRITING_FIX = "write to another path, or delete the store to start over"
"""What to do when a run would write into a store of another run."""
READING_FIX = (
    "evaluate it with the `model`, `weights` and images it was made with (recorded in the "
    "store), or generate a store for these"
)
"""What to do when a run would read a store of another run: never delete it."""
# Fields added after format version 1 was first written, with the value older stores imply.
LATER_FIELDS: dict[str, Any] = {"precision": "fp32", "method_library": {}, "name": None}
# Preprocessing names that stores written before preprocessings had names of their own record: the
# name of the protocol they were generated under, whose preprocessing is the one named here.
FORMER_PREPROCESS_NAMES = {"rise": "polycam"}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _torch_version() -> str:
    import torch  # here, not at the top: reading a store does not need torch

    return torch.__version__


def _canonical(value: Any) -> Any:
    """The value as JSON gives it back (tuples become lists), so equal settings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


@dataclass
class StoreMeta:
    """The model, weights, method and settings that produced a store's maps."""

    model: str
    weights: str
    method: str
    method_params: dict[str, Any]
    target: str
    preprocess: dict[str, Any]
    precision: str = "fp32"
    method_library: dict[str, str] = field(default_factory=dict)
    """The library that computed the maps, {"name", "version"} (`SaliencyMethod.library`), for
    the methods of other libraries; empty for xaibench's own."""
    name: str | None = None
    """The store's variant name (`generate`'s `name`: one method under other settings), which
    the tables show in place of the method; None: the method's name. Recorded only when set."""
    xaibench_version: str = xaibench.__version__
    torch_version: str = field(default_factory=_torch_version)
    created: str = field(default_factory=_now)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"target {self.target!r}: use one of {', '.join(TARGETS)}")

    @property
    def label(self) -> str:
        """What tables call the maps: the variant name, or the method's."""
        return self.name or self.method

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["name"] is None:  # stores without a variant name record what they always did
            del d["name"]
        return _canonical(d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoreMeta:
        d = {**_canonical(LATER_FIELDS), **d}
        preprocess = d.get("preprocess")
        if isinstance(preprocess, dict) and preprocess.get("name") in FORMER_PREPROCESS_NAMES:
            d["preprocess"] = {**preprocess, "name": FORMER_PREPROCESS_NAMES[preprocess["name"]]}
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise StoreError(f"store metadata lacks {', '.join(missing)}; the store is incomplete")
        return cls(**{n: d[n] for n in names})

    @classmethod
    def from_json(cls, text: str) -> StoreMeta:
        return cls.from_dict(json.loads(text))

    def to_attrs(self) -> dict[str, str]:
        """Flat string attributes for HDF5: nested settings as JSON text."""
        d = self.to_dict()
        return {k: json.dumps(v, sort_keys=True) if k in JSON_FIELDS else v for k, v in d.items()}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StoreMeta:
        d = {k: str(v) for k, v in attrs.items()}
        for k in JSON_FIELDS:
            if k in d:
                d[k] = json.loads(d[k])
        return cls.from_dict(d)

    def run_fields(self) -> dict[str, Any]:
        """The fields two runs must share to write into, or be evaluated from, the same store."""
        return {k: getattr(self, k) for k in RUN_FIELDS}

    def check_compatible(
        self, expected: dict[str, Any], source: str = "the store", fix: str = WRITING_FIX
    ) -> None:
        """StoreError naming the first field whose stored value differs from `expected`'s, and
        `fix`, what to do about it."""
        unknown = set(expected) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"not StoreMeta fields: {', '.join(sorted(unknown))}")
        for name, want in expected.items():
            have = getattr(self, name)
            if _canonical(have) != _canonical(want):
                raise StoreError(
                    f"{source} was written with {name}={json.dumps(_canonical(have))}, but this "
                    f"run has {name}={json.dumps(_canonical(want))}; {fix}"
                )
