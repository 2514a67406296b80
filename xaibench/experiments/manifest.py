"""`run.json`: what a run folder holds and how it was made.

The resolved config and its sha256, every config that has written into the folder (by digest),
the versions of xaibench, torch, torchvision (CUDA and cuDNN where used), the device, the dataset
(image root, lists, index digest) and, per stage and unit, its key, status, start, end and outputs.
Rewritten atomically after every change, so a kill leaves the last state whole.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from xaibench.core.atomic import write_text_atomic
from xaibench.core.errors import ConfigError
from xaibench.experiments.config import Experiment
from xaibench.experiments.plan import Unit

MANIFEST = "run.json"
FORMAT = 1
IDENTITY_EXEMPT = ("run.name", "run.out")
"""Keys that may differ between two configs sharing a run folder."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions(device: str) -> dict[str, str | None]:
    """The versions of what computed the results; CUDA and cuDNN when the device is CUDA."""
    import torch
    import torchvision

    import xaibench

    found = {
        "xaibench": xaibench.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    if device.startswith("cuda"):
        found["cuda"] = torch.version.cuda
        found["cudnn"] = str(torch.backends.cudnn.version())
        found["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return found


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists of tables by index ("models.0.name")."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in items:
        flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class Manifest:
    """The run.json of the run folder `out`, read when it exists."""

    def __init__(self, out: Path):
        self.path = Path(out) / MANIFEST
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text("utf-8"))
            except (OSError, ValueError) as error:
                raise ConfigError(
                    f"cannot read {self.path} ({error}); move it away to start the run afresh"
                ) from None

    def check_owner(self, experiment: Experiment) -> None:
        """ConfigError when the folder holds another experiment (another name) whose settings
        differ from `experiment`'s, naming the keys that differ."""
        recorded = self.data.get("config")
        if not recorded or recorded["run"]["name"] == experiment.config["run"]["name"]:
            return
        ours, theirs = flatten(experiment.config), flatten(recorded)
        differing = sorted(
            key
            for key in set(ours) | set(theirs)
            if key not in IDENTITY_EXEMPT and ours.get(key) != theirs.get(key)
        )
        if differing:
            raise ConfigError(
                f"{self.path.parent} holds the run {recorded['run']['name']!r} (config "
                f"{self.data.get('config_file')}), whose settings differ from "
                f"{experiment.source} in: {', '.join(differing)}; give the run another out "
                "folder, or the same name to re-run it with these settings"
            )

    def start(self, experiment: Experiment, device: str) -> None:
        """Record the experiment about to run: its config, digest, versions and device."""
        history = self.data.get("configs", {})
        history[experiment.sha256] = experiment.config
        self.data.update(
            format=FORMAT,
            name=experiment.config["run"]["name"],
            config_file=str(experiment.source),
            config_sha256=experiment.sha256,
            config=experiment.config,
            configs=history,
            versions=versions(device),
            device=device,
            started=now(),
            stages=self.data.get("stages", {}),
        )
        self.save()

    def unit(self, unit: Unit) -> dict[str, Any]:
        return self.data.get("stages", {}).get(unit.stage, {}).get("units", {}).get(unit.name, {})

    def is_done(self, unit: Unit) -> bool:
        """Whether `unit` finished with this key and its outputs are all there."""
        recorded = self.unit(unit)
        return (
            recorded.get("status") == "done"
            and recorded.get("key") == unit.key
            and all(Path(p).exists() for p in unit.outputs)
        )

    def is_stale(self, unit: Unit) -> bool:
        """Whether `unit` was recorded with another key: its outputs are of other settings."""
        recorded = self.unit(unit)
        return bool(recorded) and recorded.get("key") != unit.key

    def mark(self, unit: Unit, status: str, **extra: Any) -> None:
        """Record `unit`'s status ("running", "done", "skipped", "failed") and save."""
        stage = self.data.setdefault("stages", {}).setdefault(unit.stage, {"units": {}})
        record = stage["units"].setdefault(unit.name, {})
        if status == "running" or record.get("key") != unit.key:
            record.update(key=unit.key, started=now())
            record.pop("ended", None)
        record.update(status=status, outputs=[str(p) for p in unit.outputs], **extra)
        if status in ("done", "failed"):
            record["ended"] = now()
            if status == "done":
                record["config_sha256"] = self.data.get("config_sha256")
        statuses = {u["status"] for u in stage["units"].values()}
        stage["status"] = "done" if statuses <= {"done", "skipped"} else status
        self.save()

    def set(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def finish(self) -> None:
        self.data["ended"] = now()
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=2, default=str) + "\n")
