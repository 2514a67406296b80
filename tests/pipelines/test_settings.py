"""RunSettings: the device's defaults filled once, every value checked by its parameter name."""

import dataclasses

import pytest
import torch

from xaibench import dist
from xaibench.core import runtime
from xaibench.core.errors import ConfigError
from xaibench.pipelines.settings import RunSettings, world_of

CPU = torch.device("cpu")


def test_sizes_left_out_come_from_the_devices_defaults(monkeypatch):
    monkeypatch.setitem(runtime.DEFAULT_BATCH_SIZE, "cpu", 5)
    monkeypatch.setitem(runtime.DEFAULT_WORKERS, "cpu", 2)
    monkeypatch.setitem(runtime.DEFAULT_CHUNK_SIZE, "cpu", 7)
    settings = RunSettings.resolve()
    assert (settings.device, settings.batch_size, settings.workers) == (CPU, 5, 2)
    assert (settings.chunk_size, settings.precision, settings.compile) == (7, "fp32", False)
    given = RunSettings.resolve("cpu", batch_size=3, workers=0, chunk_size=1, progress=False)
    assert (given.batch_size, given.workers, given.chunk_size, given.progress) == (3, 0, 1, False)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("batch_size", 0),
        ("batch_size", 2.0),
        ("batch_size", True),
        ("workers", -1),
        ("chunk_size", 0),
        ("compile", "yes"),
        ("progress", 1),
    ],
)
def test_a_bad_value_is_refused_naming_its_parameter(name, value):
    with pytest.raises(ConfigError, match=f"^{name} must be"):
        RunSettings.resolve(CPU, **{name: value})
    with pytest.raises(ConfigError, match=f"^{name} must be"):
        dataclasses.replace(RunSettings.resolve(CPU), **{name: value})


def test_the_device_and_precision_are_checked():
    with pytest.raises(ConfigError, match="not a device"):
        RunSettings.resolve("gpu")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        RunSettings.resolve(CPU, precision="fp16")
    with pytest.raises(ConfigError, match="use one of"):
        RunSettings.resolve(CPU, precision="fp8")


def test_settings_move_to_the_worlds_device_of_the_same_type():
    settings = RunSettings.resolve(CPU, batch_size=3)
    assert world_of(settings, None).device == CPU and world_of(settings, None).size == 1
    world = dist.World(rank=1, size=2, device=torch.device("cpu", 0))
    with pytest.raises(ConfigError, match=r"settings\.on\(world\.device\)"):
        world_of(settings, world)
    moved = settings.on(world.device)
    assert moved.device == world.device and moved.batch_size == 3
    assert world_of(moved, world) is world
    with pytest.raises(ConfigError, match="not a cpu device"):
        settings.on(torch.device("cuda", 1))
