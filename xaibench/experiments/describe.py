"""The plan in words, for `xaibench run --dry-run`: each stage, what is already done, and the work
still to do (images x methods, forwards and backwards per image, total forwards), worked out from
the config and the models' structure (built without weights) without reading any image."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from xaibench.core.errors import XaibenchError
from xaibench.data.index import INDEX_FILE
from xaibench.experiments.manifest import Manifest
from xaibench.experiments.plan import Plan, Unit, method_settings

IMAGENET_VAL_IMAGES = 50_000


@dataclass(frozen=True)
class Work:
    """The work of one unit: images, and forwards and backwards per image (None: unknown);
    `shares`: the unit whose pass it shares, running none of its own."""

    images: int | None
    forwards: int | None
    backwards: int | None = 0
    shares: str | None = None

    @property
    def total_forwards(self) -> int | None:
        if self.images is None or self.forwards is None:
            return None
        return self.images * self.forwards

    def describe(self) -> str:
        images = "? images" if self.images is None else f"{self.images:,} images"
        if self.shares is not None:
            return f"{images}, in the pass of {self.shares}"
        if self.forwards is None:
            return f"{images}, passes per image unknown"
        per_image = f"{self.forwards} forwards"
        if self.backwards:
            per_image += f" + {self.backwards} backwards"
        total = "?" if self.total_forwards is None else f"{self.total_forwards:,}"
        return f"{images} x ({per_image}) = {total} forwards"


def planned_images(plan: Plan, manifest: Manifest) -> int | None:
    """The images the run explains, from what is known without reading them: the subset size,
    the recorded dataset, its index, or the folder's listing."""
    data = plan.experiment.config["data"]
    if isinstance(data["subset"], int):
        return data["subset"]
    if isinstance(data["subset"], str):
        lines = Path(data["subset"]).read_text("utf-8").splitlines()
        return sum(1 for line in lines if line.strip() and not line.startswith("#"))
    recorded = manifest.unit(plan.stage("dataset")[0]).get("dataset")
    if recorded:
        return int(recorded["images"])
    index = Path(data["root"]) / INDEX_FILE
    if index.is_file():
        return int(json.loads(index.read_text("utf-8"))["images"])
    if data["dataset"] == "imagenet-val":
        return IMAGENET_VAL_IMAGES
    if data["dataset"] == "samples":
        from xaibench.data.samples import SAMPLES

        return len(SAMPLES)
    if data["dataset"] == "folder":
        from xaibench.data.dataset import find_images

        return len(find_images(Path(data["root"])))
    return None


def pass_sharing(plan: Plan, manifest: Manifest) -> dict[str, str]:
    """Generate unit -> the unit whose forward and backward it shares: CAM methods of one model
    on one layer run in one pass (`shared_passes`), among the units still to do, as among those
    done. A model of the user's own, whose structure is unknown, shares nothing here."""
    from xaibench.methods.cost import shared_passes

    config = plan.experiment.config
    groups: dict[tuple[str, bool], list[Unit]] = {}
    for unit in plan.stage("generate"):
        groups.setdefault((unit.model["name"], manifest.is_done(unit)), []).append(unit)
    sharing = {}
    for units in groups.values():
        model = units[0].model
        by_method = {u.method: u for u in units}
        settings = {u.method: method_settings(config, model, u.method) for u in units}
        try:
            passes = shared_passes(settings, model["name"], model["layer"])
        except XaibenchError:
            continue
        for first, *others in passes:
            sharing |= {by_method[m].name: by_method[first].name for m in others}
    return sharing


def unit_work(plan: Plan, unit: Unit, images: int | None, shares: str | None = None) -> Work | None:
    """The work of `unit`; None for the stages that run no model (dataset, compare, report).

    shares: the generate unit whose pass `unit` shares (`pass_sharing`): no pass of its own."""
    config = plan.experiment.config
    if unit.stage == "generate" and shares is not None:
        return Work(images, 0, 0, shares=shares)
    if unit.stage == "generate":
        return _generate_work(config, unit, images)
    if unit.stage == "evaluate":
        return _evaluate_work(config, unit, images)
    if unit.stage == "sanity":
        return _sanity_work(config, unit, images)
    return None


def _generate_work(config: dict, unit: Unit, images: int | None) -> Work:
    from xaibench.methods.cost import method_passes

    settings = method_settings(config, unit.model, unit.method)
    try:
        passes = method_passes(unit.method, settings, unit.model["name"], unit.model["layer"])
    except XaibenchError:  # a model of the user's own (module:callable): its structure is unknown
        return Work(images, None)
    if passes is None:  # a method of another library whose count is not known
        return Work(images, None)
    return Work(images, passes.forwards, passes.backwards)


def _evaluate_work(config: dict, unit: Unit, images: int | None) -> Work:
    from xaibench.metrics.base import evaluation_forwards
    from xaibench.models.factory import is_user_model, model_spec
    from xaibench.pipelines.evaluate import (
        evaluation_metric_objects,
        evaluation_metrics,
        evaluation_protocol,
    )

    evaluate = config["evaluate"]
    name = unit.model["name"]
    if is_user_model(name):
        return Work(images, None)
    height, width = model_spec(name).input_size
    protocol = evaluation_protocol(unit.protocol, evaluate["step"], evaluate["road_percentages"])
    boxes = Path(config["data"]["root"]) / "boxes" if config["data"]["boxes"] else None
    names = evaluation_metrics(evaluate["metrics"], boxes)
    metrics = evaluation_metric_objects(names, evaluate["metric_params"])
    forwards = evaluation_forwards(metrics, protocol, height * width)
    return Work(images, None if forwards is None else forwards + evaluate["mc_dropout"])


def _sanity_work(config: dict, unit: Unit, images: int | None) -> Work:
    from xaibench.methods.cost import method_passes
    from xaibench.methods.support import skeleton
    from xaibench.sanity.stages import randomisation_stages

    sanity = config["sanity"]
    count = sanity["images"] if images is None else min(images, sanity["images"])
    try:
        stages = len(randomisation_stages(skeleton(unit.model["name"]), None, sanity["depth"]))
        settings = method_settings(config, unit.model, unit.method)
        passes = method_passes(unit.method, settings, unit.model["name"], unit.model["layer"])
    except XaibenchError:
        return Work(count, None)
    if passes is None:
        return Work(count, None)
    explained = stages + 1  # the original model, then each stage
    return Work(count, passes.forwards * explained, passes.backwards * explained)


def describe_plan(plan: Plan, manifest: Manifest) -> list[str]:
    """One line per stage and per unit: its status ("done", "to do", "to redo": its settings
    changed) and its work; then the forwards still to do and of the whole run."""
    config = plan.experiment.config
    images = planned_images(plan, manifest)
    lines = [
        f"{config['run']['name']}: {plan.experiment.source} (sha256 {plan.experiment.sha256[:12]}"
        f") -> {plan.out}"
    ]
    todo_forwards = all_forwards = 0
    unknown = False
    sharing = pass_sharing(plan, manifest)
    for number, (stage, units) in enumerate(plan.stages(), 1):
        done = sum(manifest.is_done(u) for u in units)
        lines.append(f"[{number}] {stage}: {done} of {len(units)} done")
        for unit in units:
            status = (
                "done"
                if manifest.is_done(unit)
                else "to redo (settings changed)"
                if manifest.is_stale(unit)
                else "to do"
            )
            work = unit_work(plan, unit, images, sharing.get(unit.name))
            detail = _stage_detail(plan, unit) if work is None else work.describe()
            lines.append(f"    {unit.name:<40} {status:<10} {detail}")
            if work is not None:
                if work.total_forwards is None:
                    unknown = True
                    continue
                all_forwards += work.total_forwards
                if status != "done":
                    todo_forwards += work.total_forwards
    approximate = " at least" if unknown else ""
    lines.append(
        f"forwards to do:{approximate} {todo_forwards:,} (whole run:{approximate} {all_forwards:,})"
    )
    return lines


def _stage_detail(plan: Plan, unit: Unit) -> str:
    data = plan.experiment.config["data"]
    if unit.stage == "dataset":
        steps = [
            {"folder": "index", "samples": "write the sample photographs"}.get(
                data["dataset"], "prepare"
            )
            + f" {data['dataset']} at {data['root']}"
        ]
        if data["verify"]:
            steps.append("verify")
        if data["subset"] is not None:
            steps.append(f"subset {data['subset']} (seed {data['seed']})")
        return ", ".join(steps)
    return ", ".join(str(p) for p in unit.outputs)
