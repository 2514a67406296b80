"""The packages of xaibench import only downward: each may import the ones before it in LAYERS."""

from __future__ import annotations

import ast
from pathlib import Path

import xaibench

PACKAGE = Path(xaibench.__file__).parent

LAYERS = (
    "core",
    "data",
    "models",
    "methods",
    "visualize",
    "metrics",
    "sanity",
    "store",
    "results",
    "dist",
    "pipelines",
    "report",
    "experiments",
    "cli",
)
"""Bottom first. `visualize` and `sanity` sit beside methods and metrics: feature visualisation
and cascading randomisation, which the pipelines and the CLI use."""

TOP_LEVEL = {"__init__", "__main__"}


def imported_packages(path: Path) -> set[tuple[str, int]]:
    """(xaibench package, line) for every import of xaibench in the file, lazy ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "xaibench" and len(parts) > 1 and parts[1] in LAYERS:
                found.add((parts[1], node.lineno))
    return found


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:
            assert relative.stem in TOP_LEVEL, f"{relative}: a module outside every package"
            continue
        package = relative.parts[0]
        assert package in LAYERS, f"{relative}: package {package} is not in LAYERS"
        allowed = set(LAYERS[: LAYERS.index(package) + 1])
        for imported, line in sorted(imported_packages(path)):
            if imported not in allowed:
                problems.append(f"xaibench/{relative}:{line} ({package}) imports {imported}")
    return problems


def test_every_package_imports_only_the_layers_below_it():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "probe.py"
    module.write_text("def f():\n    from xaibench.pipelines import generate\n")
    assert ("pipelines", 2) in imported_packages(module)
    assert imported_packages(tmp_path.joinpath("probe.py")) - {("pipelines", 2)} == set()
