"""Every preset in configs/ passes its checks and plans, so none can rot."""

from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))


def test_the_presets_are_there():
    names = {path.stem for path in CONFIGS}
    assert {
        "demo",
        "tgrad-paper",
        "polycam-paper",
        "rise-paper",
        "sanity",
        "quick-imagenette",
    } <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_dry_run(invoke, config, tmp_path):
    header = config.read_text("utf-8").split("\n[", 1)[0]
    assert header.startswith("#") and "Cost:" in header  # documented at its top, with its cost
    plan = invoke("run", config, "--dry-run", "--out", tmp_path / "run").output
    assert "[1] dataset: 0 of 1 done" in plan and "forwards to do:" in plan
    assert "generate" in plan and "report" in plan
    assert not (tmp_path / "run").exists()  # a plan reads and writes nothing
