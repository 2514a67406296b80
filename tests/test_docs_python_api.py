"""docs/python-api.md runs as written: its Python blocks, executed in order in one namespace."""

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).parents[1] / "docs" / "python-api.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


@pytest.mark.slow
def test_the_tutorial_runs_and_its_scores_are_the_metrics(tmp_path, monkeypatch):
    blocks = BLOCK.findall(PAGE.read_text(encoding="utf-8"))
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)
    table = namespace["table"]
    assert len(table) == len(namespace["images"]) == 2
    assert table[namespace["metrics"]].notna().all().all()
    assert table["deletion"].between(0, 1).all() and table["insertion"].between(0, 1).all()
    assert namespace["tgrad"].targets.tolist() == namespace["gradcam"].targets.tolist()
