"""Every name and number of an experiment checked before any work: one ConfigError naming the file,
the section and the key at the first problem."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from xaibench.core.choices import PRECISION_CHOICES, PRECISIONS, PREPROCESSINGS
from xaibench.core.errors import ConfigError, XaibenchError
from xaibench.data.prepare import DATASETS
from xaibench.experiments.config import FOLDER_DATASETS, OWN_MODEL_KEYS, Experiment, own_model
from xaibench.methods import METHODS
from xaibench.metrics import METRICS, get_protocol
from xaibench.models.factory import is_user_model, model_spec, user_model_spec
from xaibench.pipelines.evaluate import evaluation_metric_objects, evaluation_protocol
from xaibench.results.layout import STORE_COMPRESSIONS, STORE_FORMATS
from xaibench.store.meta import TARGETS


class _Where:
    """Builds errors that name the file and the section of the key at fault."""

    def __init__(self, source: Path, section: str):
        self.source, self.section = source, section

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.section} {key}: {problem}")

    def check(self, key: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """`call(*args, **kwargs)`, its library error re-raised as this key's."""
        try:
            return call(*args, **kwargs)
        except XaibenchError as error:
            raise self.error(key, str(error)) from None


def check_experiment(experiment: Experiment) -> None:
    """ConfigError for the first setting of `experiment` that cannot run, before anything is
    loaded or written. Layers are checked on the model's structure, built without weights."""
    config, source = experiment.config, experiment.source
    _check_run(config["run"], _Where(source, "[run]"))
    _check_data(config["data"], _Where(source, "[data]"))
    names = [model["name"] for model in config["models"]]
    for number, model in enumerate(config["models"], 1):
        where = _Where(source, f"[[models]] #{number}")
        if names.count(model["name"]) > 1:
            raise where.error("name", f"{model['name']} is listed twice; its outputs would collide")
        _check_model(model, where)
    _check_generate(config["generate"], config["models"], _Where(source, "[generate]"))
    _check_evaluate(
        config["evaluate"], config["generate"], config["data"], _Where(source, "[evaluate]")
    )
    if experiment.has_sanity:
        _check_sanity(config["sanity"], _Where(source, "[sanity]"))
    report = _Where(source, "[report]")
    for key in ("images", "resamples"):
        _at_least(config["report"], key, 1, report)


def _at_least(section: dict[str, Any], key: str, low: int, where: _Where) -> None:
    value = section[key]
    if value is not None and value < low:
        raise where.error(key, f"{value} is too small; give at least {low}")


def _check_run(run: dict[str, Any], where: _Where) -> None:
    device = run["device"]
    if device not in ("auto", "cpu", "cuda") and not (
        device.startswith("cuda:") and device[5:].isdigit()
    ):
        raise where.error("device", f"{device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if run["precision"] not in PRECISIONS:
        choices = ", ".join(PRECISION_CHOICES)
        raise where.error("precision", f"{run['precision']!r}: use one of {choices}")
    for key, low in (("batch_size", 1), ("workers", 0), ("chunk_size", 1)):
        _at_least(run, key, low, where)


def _check_data(data: dict[str, Any], where: _Where) -> None:
    dataset = data["dataset"]
    known = (*DATASETS, *FOLDER_DATASETS)
    if dataset not in known:
        close = difflib.get_close_matches(dataset, known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise where.error(
            "dataset", f"unknown dataset {dataset!r}.{hint} Known: {', '.join(known)}"
        )
    if dataset == "local" and data["source"] is None:
        raise where.error("source", "the dataset 'local' indexes the folder source; give it")
    if dataset == "folder" and not Path(data["root"]).is_dir():
        raise where.error("root", f"{data['root']} is not a folder of images")
    for key in ("source", "labels"):
        if data[key] is not None and not Path(data[key]).exists():
            raise where.error(key, f"{data[key]} does not exist")
    for archive in data["archives"]:
        if not Path(archive).is_file():
            raise where.error("archives", f"{archive} is not a file")
    if data["boxes"] and dataset != "imagenet-val":
        raise where.error("boxes", "only imagenet-val comes with bounding boxes")
    subset = data["subset"]
    if isinstance(subset, int) and subset < 1:
        raise where.error("subset", f"{subset}: give a number of images >= 1, or an image list")
    if isinstance(subset, str) and not Path(subset).is_file():
        raise where.error("subset", f"{subset} is not a file (an image list, first column ids)")


def _check_model(model: dict[str, Any], where: _Where) -> None:
    name = model["name"]
    user = is_user_model(name)
    if not user:
        try:
            model_spec(name)
        except XaibenchError as error:  # the key at fault is this table's name
            raise where.error("name", error.message) from None
    stated = [key for key in OWN_MODEL_KEYS if model[key] is not None]
    if stated and not user:
        raise where.error(
            stated[0], f"{name} states its own; {', '.join(OWN_MODEL_KEYS)} are for module:callable"
        )
    if user:
        try:
            user_model_spec(name, **own_model(model))
        except ConfigError as error:
            raise where.error(error.param or "name", error.message) from None
    weights = model["weights"]
    path = Path(weights)
    looks_like_a_file = path.suffix or "/" in weights
    if weights not in ("default", "none") and looks_like_a_file and not path.is_file():
        raise where.error("weights", f"{weights} is not a file (a state dict)")
    if model["layer"] is not None and not user:
        from xaibench.methods.support import skeleton

        layers = [n for n, _ in skeleton(name).named_modules() if n]
        if model["layer"] not in layers:
            close = difflib.get_close_matches(model["layer"], layers, n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise where.error("layer", f"{name} has no module {model['layer']!r}{hint}")


def _check_generate(generate: dict[str, Any], models: list[dict[str, Any]], where: _Where) -> None:
    preprocessing = generate["preprocessing"]
    if preprocessing not in PREPROCESSINGS:
        raise where.error("preprocessing", f"{preprocessing!r}: use {' or '.join(PREPROCESSINGS)}")
    for model in models if preprocessing == "model" else ():
        name = model["name"]
        spec = (
            user_model_spec(name, **own_model(model)) if is_user_model(name) else model_spec(name)
        )
        where.check("preprocessing", spec.own_preprocess, model["weights"])
    methods = generate["methods"]
    if not methods:
        raise where.error("methods", "give at least one method")
    if len(set(methods)) != len(methods):
        raise where.error("methods", f"names a method twice: {', '.join(methods)}")
    for name in methods:
        where.check("methods", METHODS.get, name)
    if generate["target"] not in TARGETS:
        raise where.error("target", f"{generate['target']!r}: use one of {', '.join(TARGETS)}")
    if generate["store"] not in STORE_FORMATS:
        raise where.error("store", f"{generate['store']!r}: use one of {', '.join(STORE_FORMATS)}")
    if generate["compression"] not in STORE_COMPRESSIONS:
        choices = ", ".join(STORE_COMPRESSIONS)
        raise where.error("compression", f"{generate['compression']!r}: use one of {choices}")
    for method, settings in generate["params"].items():
        key = f"params.{method}"
        if method not in methods:
            raise where.error(key, f"{method} is not among methods ({', '.join(methods)})")
        if not isinstance(settings, dict):
            raise where.error(key, "must be a table of the method's settings")
        accepted = set(METHODS.get(method).setting_names())
        for setting in settings:
            if setting not in accepted:
                known = ", ".join(sorted(accepted)) or "none"
                raise where.error(f"{key}.{setting}", f"{method} has no such setting ({known})")
            if setting == "layer":
                raise where.error(f"{key}.layer", "give a model's layer in its [[models]] table")
    for method in methods:
        settings = generate["params"].get(method, {})
        where.check(f"params.{method}", METHODS.get(method).full_settings, settings)
    layered = [m for m in methods if "layer" in METHODS.get(m).setting_names()]
    for model in models:
        if model["layer"] is not None and not layered:
            raise where.error(
                "methods",
                f"{model['name']} has a layer, but none of {', '.join(methods)} takes one",
            )


def _check_evaluate(
    evaluate: dict[str, Any], generate: dict[str, Any], data: dict[str, Any], where: _Where
) -> None:
    if not evaluate["protocols"]:
        raise where.error("protocols", "give at least one protocol")
    if not evaluate["metrics"]:
        raise where.error("metrics", "give at least one metric")
    protocols = [
        where.check(
            "protocols", evaluation_protocol, n, evaluate["step"], evaluate["road_percentages"]
        )
        for n in evaluate["protocols"]
    ]
    generating = _Where(where.source, "[generate]")
    preprocessing = generating.check("protocol", get_protocol, generate["protocol"]).preprocessing
    for name, protocol in zip(evaluate["protocols"], protocols, strict=True):
        if protocol.preprocessing != preprocessing:
            raise where.error(
                "protocols",
                f"{name} preprocesses images unlike {generate['protocol']}, whose preprocessing "
                "the stores are made with; evaluate it in a config of its own",
            )
    for name in evaluate["metrics"]:
        metric = where.check("metrics", METRICS.get, name)
        if metric.needs_boxes and not data["boxes"]:
            raise where.error("metrics", f"{name} needs bounding boxes: set boxes = true in [data]")
    where.check(
        "metric_params",
        evaluation_metric_objects,
        evaluate["metrics"],
        evaluate["metric_params"],
    )
    _at_least(evaluate, "step", 1, where)
    if evaluate["mc_dropout"] < 0 or evaluate["mc_dropout"] == 1:
        raise where.error("mc_dropout", "0 (none) or at least 2 passes, to estimate a variance")


def _check_sanity(sanity: dict[str, Any], where: _Where) -> None:
    if not sanity["methods"]:
        raise where.error("methods", "give at least one method")
    for name in sanity["methods"]:
        where.check("methods", METHODS.get, name)
    _at_least(sanity, "images", 1, where)
    _at_least(sanity, "depth", 1, where)
