"""An experiment as a TOML file: its schema, its defaults, and the checks a file passes before any
work starts.

`load_config(path, overrides)` reads the file, applies `SECTION.KEY=VALUE` overrides, checks every
section and key against `SCHEMA` (an unknown key names the file, the section, the key and the
closest known keys; a wrong type names the type expected) and returns an `Experiment`: the
config with every default filled in. `check_experiment` then checks the names in it against the
registries (datasets, models, layers, methods and their settings, metrics, protocols).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from xaibench.core.choices import (
    AUTO_PRECISION,
    BOOTSTRAP_RESAMPLES,
    DEFAULT_GRID_IMAGES,
    DEFAULT_METRICS,
    DEFAULT_THRESHOLD,
    PRECISION_CHOICES,
    PREPROCESSINGS,
)
from xaibench.core.errors import ConfigError

REQUIRED = object()
"""The default of a key the file must give."""

FOLDER_DATASETS = ("folder", "samples")
"""Datasets that need no download: an image folder as it is, and the shipped photographs."""


@dataclass(frozen=True)
class Key:
    """One key of a section: the TOML types it takes, its default and what it means."""

    kind: str
    default: Any
    help: str

    def accepts(self, value: Any) -> bool:
        """Whether `value` (as TOML reads it) is of this key's kind."""
        if self.kind == "list[str]":
            return isinstance(value, list) and all(isinstance(v, str) for v in value)
        if self.kind == "list[number]":
            return isinstance(value, list) and all(_is_number(v) for v in value)
        if self.kind == "int or str":
            return isinstance(value, str) or _is_int(value)
        if self.kind == "table":
            return isinstance(value, dict)
        checks = {
            "str": lambda v: isinstance(v, str),
            "int": _is_int,
            "float": _is_number,
            "bool": lambda v: isinstance(v, bool),
        }
        return checks[self.kind](value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


KIND_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list[str]": "a list of strings",
    "list[number]": "a list of numbers",
    "int or str": "an integer or a string (a path)",
    "table": "a table",
}

SCHEMA: dict[str, dict[str, Key]] = {
    "run": {
        "name": Key("str", REQUIRED, "the experiment's name, recorded in run.json"),
        "out": Key("str", "runs", "the run folder, unless the run is given another"),
        "device": Key("str", "auto", "auto (CUDA when present), cpu, cuda or cuda:N"),
        "precision": Key(
            "str",
            "auto",
            f"the forward's precision: {', '.join(PRECISION_CHOICES)} (auto: tf32 on CUDA, fp32 "
            "elsewhere; the resolved config holds the one used)",
        ),
        "compile": Key("bool", False, "torch.compile the model's forward"),
        "deterministic": Key(
            "bool", False, "deterministic algorithms only (bit-repeatable GPU runs)"
        ),
        "batch_size": Key("int", None, "images per batch (default: the device's)"),
        "workers": Key("int", None, "image decoding processes (default: the device's)"),
        "chunk_size": Key("int", None, "perturbed images per forward in evaluate"),
    },
    "data": {
        "dataset": Key("str", REQUIRED, "a dataset of `xaibench download`, folder or samples"),
        "root": Key("str", REQUIRED, "where the dataset is, or where it is prepared"),
        "subset": Key("int or str", None, "N images (stratified, seeded) or an image list file"),
        "seed": Key("int", 0, "the seed of the subset"),
        "labels": Key("str", None, "a labels file, for a flat folder"),
        "source": Key("str", None, "local: the ImageNet layout on disk to index"),
        "archives": Key("list[str]", [], "archives the user has (imagenet-val, public sets)"),
        "url_base": Key("str", None, "a server folder holding the archives"),
        "sha256": Key("str", None, "a whole-file sha256 of a public set's archive"),
        "boxes": Key("bool", False, "imagenet-val: also the bounding boxes"),
        "skip_bad": Key("bool", False, "skip images that cannot be decoded"),
        "verify": Key("bool", True, "count the images per class and decode every image first"),
    },
    "generate": {
        "methods": Key("list[str]", REQUIRED, "the saliency methods (`xaibench list methods`)"),
        "target": Key("str", "predicted", "the class explained: predicted or label"),
        "store": Key("str", "h5", "h5, or npz for the T-Grad authors' scripts"),
        "compression": Key("str", "lzf", "maps of new stores: lzf, gzip or none (same maps)"),
        "protocol": Key("str", None, "whose preprocessing (default: the first evaluate protocol)"),
        "preprocessing": Key(
            "str", "protocol", f"{' or '.join(PREPROCESSINGS)} (the weights' own; every stage)"
        ),
        "params": Key("table", {}, "per method, its settings: [generate.params.rise] masks = 8000"),
    },
    "evaluate": {
        "protocols": Key("list[str]", ["polycam"], "the evaluation protocols"),
        "metrics": Key("list[str]", list(DEFAULT_METRICS), "the metrics (`xaibench list metrics`)"),
        "metric_params": Key(
            "table",
            {},
            'per metric, its settings: [evaluate.metric_params."quantus.Complexity"] abs = false',
        ),
        "step": Key("int", None, "pixels per insertion/deletion step (default: the protocol's)"),
        "road_percentages": Key("list[number]", None, "ROAD's percentages (default 10..90)"),
        "mc_dropout": Key("int", 0, "passes of MC dropout (0: none)"),
        "mc_seed": Key("int", 0, "the seed of MC dropout"),
    },
    "sanity": {
        "methods": Key("list[str]", None, "the methods checked (default: generate's)"),
        "images": Key("int", 50, "the first N images of the dataset"),
        "seed": Key("int", 0, "the seed of the re-initialisations"),
        "depth": Key("int", None, "randomise blocks of modules grouped by N name parts"),
        "threshold": Key("float", DEFAULT_THRESHOLD, "flag a method above this final Spearman"),
    },
    "report": {
        "images": Key("int", DEFAULT_GRID_IMAGES, "images in the overlay grid"),
        "resamples": Key("int", BOOTSTRAP_RESAMPLES, "bootstrap resamples per interval"),
    },
}
"""Section -> key -> Key. `[[models]]` (MODEL_KEYS) is an array of tables, one per model."""

MODEL_KEYS: dict[str, Key] = {
    "name": Key("str", REQUIRED, "a registered model, timm/NAME or module:callable"),
    "weights": Key("str", "default", "default, none, a weights name or a state-dict file"),
    "layer": Key("str", None, "the CAM layer of this model (default: found from its structure)"),
    "mean": Key(
        "list[number]", None, "a module:callable model's mean, R, G, B (default ImageNet's)"
    ),
    "std": Key("list[number]", None, "a module:callable model's std, R, G, B (default ImageNet's)"),
    "input_size": Key("list[number]", None, "a module:callable model's input [H, W] (default 224)"),
    "crop": Key(
        "float", None, "a module:callable model's centre-crop fraction (model preprocessing)"
    ),
}
OWN_MODEL_KEYS = ("mean", "std", "input_size", "crop")
"""The [[models]] keys a model of the user's own states about itself (`load_model`'s keywords)."""


def own_model(model: Mapping[str, Any]) -> dict[str, Any]:
    """`load_model`'s keywords for what the [[models]] table `model` states about a model of the
    user's own (`OWN_MODEL_KEYS`; None where not stated)."""
    mean, std, size = model["mean"], model["std"], model["input_size"]
    if size is not None:
        size = size[0] if len(size) == 1 else tuple(size)
    return {
        "mean": None if mean is None else tuple(mean),
        "std": None if std is None else tuple(std),
        "input_size": size,
        "crop": model["crop"],
    }


LATER_DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {"deterministic": False},
    "generate": {"preprocessing": "protocol", "compression": "lzf"},
    "evaluate": {"metric_params": {}},
    "models": dict.fromkeys(OWN_MODEL_KEYS),
}
"""Keys added after configs were first digested, with their defaults. A key at its default is left
out of the digests (`digested`), so a config that does not set it keeps its sha256 and its units
their keys."""

REQUIRED_SECTIONS = ("run", "data", "models", "generate")
OPTIONAL_SECTIONS = ("sanity",)
"""Sections that add a stage only when the file has them; the others are filled with defaults."""


@dataclass(frozen=True)
class Experiment:
    """A config with every default filled in (`config`), the file it came from and its digest.

    `sha256` is the digest of the resolved config without `run.out` (where the run goes is not
    what it computes), written as sorted, compact JSON: every table of the run carries it.
    """

    config: dict[str, Any]
    source: Path

    @property
    def sha256(self) -> str:
        return config_sha256(self.config)

    def section(self, name: str) -> dict[str, Any]:
        return self.config[name]

    @property
    def models(self) -> list[dict[str, Any]]:
        return self.config["models"]

    @property
    def out(self) -> Path:
        return Path(self.config["run"]["out"])

    @property
    def has_sanity(self) -> bool:
        return "sanity" in self.config


def digest(value: Any) -> str:
    """The sha256 of `value` as sorted compact JSON."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def digested(section: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of `values` (one table of `section`) that a digest reads: all but those of
    `LATER_DEFAULTS` at their default."""
    later = LATER_DEFAULTS.get(section, {})
    return {k: v for k, v in values.items() if k not in later or v != later[k]}


def config_sha256(config: Mapping[str, Any]) -> str:
    """The sha256 of `config` without `run.out` and the later keys at their defaults
    (`digested`), as sorted compact JSON (`digest`)."""
    identity = {k: digested(k, v) if isinstance(v, dict) else v for k, v in config.items()}
    identity["run"] = digested("run", {k: v for k, v in config["run"].items() if k != "out"})
    identity["models"] = [digested("models", model) for model in config["models"]]
    return digest(identity)


def load_config(path: Path, overrides: Sequence[str] = (), out: Path | None = None) -> Experiment:
    """The experiment in the TOML file at `path`, with `overrides` (`SECTION.KEY=VALUE`, VALUE a
    TOML value or bare text; `models.N.KEY` for the N-th model, `generate.params.METHOD.KEY` for
    a method's setting) and `out` in place of `run.out`; every default filled in."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text("utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read config {path} ({error.strerror or error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path} is not valid TOML: {error}") from None
    for override in overrides:
        apply_override(raw, override, path)
    if out is not None:
        raw.setdefault("run", {})["out"] = str(out)
    return Experiment(resolve(raw, path), path)


def apply_override(raw: dict[str, Any], override: str, path: Path) -> None:
    """Set `SECTION.KEY=VALUE` in the parsed file `raw` (in place)."""
    target, sep, text = override.partition("=")
    parts = target.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"override {override!r}: write SECTION.KEY=VALUE, e.g. run.device=cpu")
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"override {override!r}: {'.'.join(parts[:depth])} has {len(node)} "
                    f"entries in {path}; give an index 0..{len(node) - 1}"
                )
            node = node[int(part)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[: depth + 1])} is a value")
    if isinstance(node, list):
        raise ConfigError(f"override {override!r}: give the entry's index, e.g. models.0.weights")
    node[parts[-1]] = value


def resolve(raw: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """The parsed file with every key checked against `SCHEMA` and every default filled in."""
    known = [*SCHEMA, "models"]
    for section in raw:
        if section not in known:
            raise ConfigError(_unknown(path, "the file", "section", section, known))
    for section in REQUIRED_SECTIONS:
        if section not in raw:
            raise ConfigError(f"{path}: the section [{section}] is missing; every config has it")
    models = raw["models"]
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise ConfigError(f"{path}: models must be one or more [[models]] tables")
    config: dict[str, Any] = {}
    for section, keys in SCHEMA.items():
        if section in raw or section not in OPTIONAL_SECTIONS:
            config[section] = _section(raw.get(section, {}), keys, path, f"[{section}]")
    config["models"] = [
        _section(model, MODEL_KEYS, path, f"[[models]] #{i + 1}") for i, model in enumerate(models)
    ]
    generate, evaluate = config["generate"], config["evaluate"]
    if generate["protocol"] is None:
        generate["protocol"] = evaluate["protocols"][0] if evaluate["protocols"] else "polycam"
    if "sanity" in config and config["sanity"]["methods"] is None:
        config["sanity"]["methods"] = list(generate["methods"])
    run = config["run"]
    if run["precision"] == "auto":
        run["precision"] = AUTO_PRECISION.get(device_type(run["device"]), "fp32")
    return config


def device_type(device: str) -> str:
    """The device type `run.device` names: "auto" is cuda when a CUDA device is visible, else
    cpu; "cuda:N" is cuda."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device.partition(":")[0]


def _section(values: Any, keys: Mapping[str, Key], path: Path, where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: {where} must be a table, not {type(values).__name__}")
    for name in values:
        if name not in keys:
            raise ConfigError(_unknown(path, where, "key", name, list(keys)))
    section = {}
    for name, key in keys.items():
        if name not in values:
            if key.default is REQUIRED:
                raise ConfigError(f"{path}: {where} needs {name} ({key.help})")
            section[name] = copy.deepcopy(key.default)
            continue
        value = values[name]
        if not key.accepts(value):
            raise ConfigError(
                f"{path}: {where} {name} = {value!r}: expected {KIND_NAMES[key.kind]} ({key.help})"
            )
        section[name] = value
    return section


def _unknown(path: Path, where: str, what: str, name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return f"{path}: {where} has no {what} {name!r}{hint} (known: {', '.join(known)})"
