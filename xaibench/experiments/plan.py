"""The plan of an experiment: its stages, split into units of work, each keyed by everything that
changes its outputs.

A unit's key is the sha256 of its settings and of the keys of the units it reads, so a changed
setting changes the key of the units it affects and of every unit after them, never of an earlier
one. A unit whose key and outputs are those recorded in run.json is done and skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xaibench.experiments.config import OWN_MODEL_KEYS, Experiment, digest, digested
from xaibench.results import layout

STAGES = ("dataset", "generate", "evaluate", "sanity", "compare", "report")
"""The stages, in the order they run."""

REPORT_DIR = "report"
COMPARISON_FILES = ("comparison.md", "comparison.csv")
DATASET_DIR = "dataset"


@dataclass(frozen=True)
class Unit:
    """One piece of a stage: `name` ("vgg16/tgrad/polycam"), `key`, the files it writes, and
    what it runs on (`model`, `method`, `protocol`, where they apply)."""

    stage: str
    name: str
    key: str
    outputs: tuple[Path, ...]
    model: dict[str, Any] | None = None
    method: str | None = None
    protocol: str | None = None


@dataclass
class Plan:
    """The units of every stage of `experiment`, in order, under the run folder `out`."""

    experiment: Experiment
    out: Path
    units: list[Unit] = field(default_factory=list)

    def stage(self, name: str) -> list[Unit]:
        return [unit for unit in self.units if unit.stage == name]

    def stages(self) -> Iterator[tuple[str, list[Unit]]]:
        for name in STAGES:
            units = self.stage(name)
            if units:
                yield name, units


def method_settings(config: Mapping[str, Any], model: Mapping[str, Any], method: str) -> dict:
    """The settings `method` runs with on `model`: its [generate.params.METHOD] table, and the
    model's layer when the method takes one."""
    from xaibench.methods import METHODS

    settings = dict(config["generate"]["params"].get(method, {}))
    if model["layer"] is not None and "layer" in METHODS.get(method).setting_names():
        settings["layer"] = model["layer"]
    return settings


def subset_file(out: Path, data: Mapping[str, Any]) -> Path | None:
    """The image list the run reads: the one given, or the one it writes for `subset = N`."""
    subset = data["subset"]
    if subset is None:
        return None
    if isinstance(subset, str):
        return Path(subset)
    return Path(out) / DATASET_DIR / f"subset-{subset}-seed{data['seed']}.txt"


def model_identity(model: dict[str, Any]) -> dict[str, Any]:
    """What of a [[models]] table its outputs depend on: the name, the weights and what a model
    of the user's own states about itself (where stated)."""
    return digested("models", {k: model[k] for k in ("name", "weights", *OWN_MODEL_KEYS)})


def make_plan(experiment: Experiment, out: Path | None = None) -> Plan:
    """Every unit of `experiment` with its key and outputs, under `out` (default: run.out)."""
    config = experiment.config
    out = Path(out or experiment.out)
    plan = Plan(experiment, out)
    run, generate, evaluate = config["run"], config["generate"], config["evaluate"]
    dataset_key = digest({"data": config["data"]})
    listing = subset_file(out, config["data"])
    plan.units.append(
        Unit("dataset", "dataset", dataset_key, () if listing is None else (listing,))
    )
    evaluations = []
    for model in config["models"]:
        for method in generate["methods"]:
            store = layout.store_path(out, model["name"], method, generate["store"])
            generate_key = digest(
                {
                    "dataset": dataset_key,
                    "model": model_identity(model),
                    "method": method,
                    "settings": method_settings(config, model, method),
                    "generate": {
                        k: v
                        for k, v in digested("generate", generate).items()
                        if k not in ("methods", "params", "compression")  # same maps either way
                    },
                    "precision": run["precision"],
                }
            )
            name = f"{model['name']}/{method}"
            plan.units.append(
                Unit("generate", name, generate_key, (store,), model=model, method=method)
            )
            for protocol in evaluate["protocols"]:
                settings = {
                    k: v for k, v in digested("evaluate", evaluate).items() if k != "protocols"
                }
                key = digest(
                    {
                        "store": generate_key,
                        "protocol": protocol,
                        "evaluate": settings,
                        "boxes": config["data"]["boxes"],
                        "precision": run["precision"],
                    }
                )
                evaluations.append(
                    Unit(
                        "evaluate",
                        f"{name}/{protocol}",
                        key,
                        evaluation_outputs(store, protocol, evaluate),
                        model=model,
                        method=method,
                        protocol=protocol,
                    )
                )
    plan.units += evaluations
    sanity_keys = []
    if experiment.has_sanity:
        sanity = config["sanity"]
        for model in config["models"]:
            folder = layout.sanity_dir(out, model["name"])
            for method in sanity["methods"]:
                key = digest(
                    {
                        "dataset": dataset_key,
                        "model": model_identity(model),
                        **digested("generate", {"preprocessing": generate["preprocessing"]}),
                        "method": method,
                        "settings": method_settings(config, model, method),
                        "sanity": {k: v for k, v in sanity.items() if k != "methods"},
                    }
                )
                paths = layout.sanity_paths(folder, method)
                unit = Unit(
                    "sanity",
                    f"{model['name']}/{method}",
                    key,
                    (paths["table"], paths["plot"]),
                    model=model,
                    method=method,
                )
                plan.units.append(unit)
                sanity_keys.append(key)
    evaluation_keys = [unit.key for unit in evaluations]
    comparison = tuple(out / name for name in COMPARISON_FILES)
    plan.units.append(
        Unit("compare", "comparison", digest({"evaluations": evaluation_keys}), comparison)
    )
    report_key = digest(
        {"evaluations": evaluation_keys, "sanity": sanity_keys, "report": config["report"]}
    )
    plan.units.append(Unit("report", REPORT_DIR, report_key, report_outputs(out)))
    return plan


def evaluation_outputs(store: Path, protocol: str, evaluate: Mapping[str, Any]) -> tuple[Path, ...]:
    """The per-image, curves and summary files of `store`'s evaluation under `protocol` as the
    run names it (with `step` and `road_percentages` applied, as `evaluation_protocol` does)."""
    from xaibench.pipelines.evaluate import evaluation_protocol

    chosen = evaluation_protocol(protocol, evaluate["step"], evaluate["road_percentages"])
    stem = layout.evaluation_stem(store, chosen.name)
    paths = layout.evaluation_paths(layout.metrics_dir(store), stem)
    return tuple(paths[name] for name in ("per_image", "curves", "summary"))


def report_outputs(out: Path) -> tuple[Path, ...]:
    """report.html and report.md in out/report: one report of every model."""
    return tuple(Path(out) / REPORT_DIR / name for name in ("report.html", "report.md"))
