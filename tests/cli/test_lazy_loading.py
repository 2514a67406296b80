"""`xaibench --help` and every command's --help import neither torch, torchvision nor timm; commands
are imported when looked up, and the registries still hold every member when a command uses them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

import xaibench.data
from xaibench.cli import COMMANDS, cli
from xaibench.core.lazy import load
from xaibench.methods import METHODS
from xaibench.metrics import METRICS
from xaibench.models import MODELS

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision")
PEERS = ("captum", "pytorch_grad_cam")
"""The libraries of the adapter families: imported only when one of their methods is used."""
OPTIONAL = ("timm", "transformers")  # imported only for a timm/ or hf/ model

# Runs in a fresh interpreter: each command's --help, then the group's, through the console entry
# point; after each, which of the modules argv[2:] are loaded. argv[1]: a module to import first.
HELP_PROBE = """
import json, sys
heavy = sys.argv[2:]
if sys.argv[1]:
    __import__(sys.argv[1])
from xaibench.cli import COMMANDS, main
loaded = {}
for args in [[name, "--help"] for name in COMMANDS] + [["--help"]]:
    sys.argv = ["xaibench", *args]
    main()
    loaded[" ".join(args)] = [m for m in heavy if m in sys.modules]
print(json.dumps(loaded), file=sys.stderr)
"""


def run_fresh(script: str, *args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        check=True,
    )


def heavy_after_each_help(preload: str = "", heavy=HEAVY) -> dict[str, list[str]]:
    """--help of each command, then of the group -> the `heavy` modules loaded by then."""
    done = run_fresh(HELP_PROBE, preload, *heavy)
    assert done.stdout.count("Usage:") == len(COMMANDS) + 1
    return json.loads(done.stderr.strip().splitlines()[-1])


def test_no_help_imports_torch_torchvision_or_timm():
    loaded = heavy_after_each_help(heavy=HEAVY + OPTIONAL)
    assert list(loaded) == [f"{name} --help" for name in COMMANDS] + ["--help"]
    assert {args: heavy for args, heavy in loaded.items() if heavy} == {}


def test_the_check_sees_torch_once_anything_has_imported_it():
    loaded = heavy_after_each_help("xaibench.pipelines.generate")
    assert all(heavy == list(HEAVY) for heavy in loaded.values())


def test_only_a_timm_model_imports_timm():
    script = (
        "import sys\n"
        "from xaibench.models import load_model\n"
        "load_model('resnet18', 'none')\n"
        "print('timm' in sys.modules)\n"
        "load_model('timm/test_resnet', 'none')\n"
        "print('timm' in sys.modules)\n"
    )
    assert run_fresh(script).stdout.split() == ["False", "True"]


def test_the_table_names_every_command_and_each_entry_is_that_command():
    assert cli.list_commands(click.Context(cli)) == sorted(COMMANDS)
    for name, target in COMMANDS.items():
        command = load(target)
        assert isinstance(command, click.Command) and command.name == name
        assert cli.get_command(click.Context(cli), name) is command


def test_an_unknown_command_is_refused_as_before(invoke):
    result = invoke("generat")
    assert result.exit_code == 2 and "No such command 'generat'" in result.output


def test_load_refuses_a_name_without_an_attribute():
    assert load("xaibench.cli:COMMANDS") is COMMANDS
    with pytest.raises(ValueError, match="module:attribute"):
        load("xaibench.cli")


def test_the_data_package_resolves_its_names_on_first_use():
    from xaibench.data.dataset import ImageFolderDataset

    assert xaibench.data.ImageFolderDataset is ImageFolderDataset
    assert set(xaibench.data.__all__) <= set(dir(xaibench.data))
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        xaibench.data.Missing  # noqa: B018


def test_a_fresh_list_command_sees_every_registered_member():
    script = (
        "import json, sys\n"
        "from click.testing import CliRunner\n"
        "from xaibench.cli import cli\n"
        "print(json.dumps({what: CliRunner().invoke(cli, ['list', what, '--no-support']).output"
        " for what in ('models', 'methods', 'metrics')}))\n"
        f"print(json.dumps([m for m in {PEERS!r} if m in sys.modules]))\n"
    )
    listing, peers = run_fresh(script).stdout.splitlines()
    lines = {what: text.splitlines() for what, text in json.loads(listing).items()}
    assert "timm" in lines["models"].pop()  # the last line: how to list timm's models
    assert "hf/MODEL_ID" in lines["models"].pop()  # and the Hugging Face classifiers
    for what, registry in (("models", MODELS), ("methods", METHODS), ("metrics", METRICS)):
        names = [line.split()[0] for line in lines[what]]
        families = [family.placeholder for family in registry.families()]
        assert names == registry.names() + families, what
    assert [f.placeholder for f in METHODS.families()] == ["captum.CLASS", "gradcam-lib.CLASS"]
    assert json.loads(peers) == []


def test_no_help_imports_the_adapters_libraries():
    done = run_fresh(HELP_PROBE, "", *PEERS)
    assert all(loaded == [] for loaded in json.loads(done.stderr.strip().splitlines()[-1]).values())
