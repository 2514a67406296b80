"""Errors at the terminal: one `error: --flag: message` format for the library's errors and
click's, with parameters shown as flags from one table that the sources cannot outgrow."""

import ast
import re
from pathlib import Path

import click
import pytest

import xaibench
from xaibench.cli import COMMANDS, main
from xaibench.cli.errors import FLAGS, NAMED, error_text, flag_text
from xaibench.core.errors import ConfigError, DataError
from xaibench.core.lazy import load

SOURCES = Path(xaibench.__file__).parent
CLI = SOURCES / "cli"
FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")
COMMAND_LINE = re.compile(r"`(?:xaibench|torchrun) [^`]*`")
"""A quoted command line, where another program's or a command's flags belong."""


def run_main(capsys, *args) -> tuple[int, list[str]]:
    """`xaibench ARGS` through the console entry point: (exit code, stderr lines)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    return exit_info.value.code, capsys.readouterr().err.splitlines()


def test_a_parameter_reads_as_its_name_in_python_and_as_its_flag_at_the_terminal():
    error = ConfigError("pass `skip_bad` to leave it out", param="data_dir")
    assert str(error) == "data_dir: pass `skip_bad` to leave it out"
    assert error_text(error) == "--data: pass --skip-bad to leave it out"
    assert error_text(DataError("check the `boxes` folder")) == "check the --boxes folder"


def test_only_backticked_parameters_of_the_table_become_flags():
    text = "add tgrad to `methods` (see `xaibench list methods`); `no_such_name`, methods stay"
    assert flag_text(text) == (
        "add tgrad to --saliency (see `xaibench list methods`); `no_such_name`, methods stay"
    )
    assert error_text(ConfigError("x", param="not_in_the_table")) == "not_in_the_table: x"


def test_a_click_usage_error_and_a_library_error_print_in_one_format(capsys, tmp_path):
    code, lines = run_main(capsys, "generate", "--model", "m", "--batch-size", 0)
    assert code == 2
    assert lines == [
        "error: --batch-size: 0 is not in the range x>=1",
        "see: xaibench generate --help",
    ]
    args = ["evaluate", "--model", "m", "--store", tmp_path / "s.h5", "--data", tmp_path]
    code, lines = run_main(capsys, *args, "--metrics", "pointing_game")
    assert code == 2
    assert lines == [
        "error: --metrics: pointing_game needs bounding boxes; pass --boxes, a folder of them"
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["generate", "--nonsense"], "error: --nonsense: no such option"),
        (["download"], "error: DATASET: required; choose from: imagenet-val, imagenette,"),
        (["download", "imagenette-160", "--dest", "d", "--boxes"], "error: --boxes: does not apply to imagenette-160"),
        (["download", "local", "--dest", "d"], "error: --source: local needs the folder to index"),
        (["generat"], "error: no such command 'generat'"),
    ],
)  # fmt: skip
def test_every_usage_error_names_the_flag_and_the_help_to_read(capsys, args, expected):
    code, lines = run_main(capsys, *args)
    command = " ".join(["xaibench", *args[:1]]) if args[0] in COMMANDS else "xaibench"
    assert code == 2 and len(lines) == 2
    assert lines[0].startswith(expected) and lines[1] == f"see: {command} --help"


def test_a_command_s_own_exit_code_is_kept(capsys, image_folder):
    code, lines = run_main(capsys, "verify", image_folder, "--expect-per-class", 2, "--quiet")
    assert code == 1 and not lines
    assert main(["--version"]) is None


def _sources(under_cli: bool) -> list[tuple[Path, ast.Module]]:
    paths = sorted(SOURCES.rglob("*.py"))
    assert len(paths) > 50
    return [(p, ast.parse(p.read_text())) for p in paths if p.is_relative_to(CLI) == under_cli]


def _messages(tree: ast.Module) -> list[ast.Constant]:
    """The module's string literals, f-string parts included, except documentation (a string
    that is a statement of its own: a docstring)."""
    documentation = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in documentation
    ]


def _named_parameters() -> dict[str, str]:
    """Every parameter the sources name -> where: a `param="..."` keyword anywhere, or a
    backticked identifier in a library message."""
    named = {}
    for path, tree in _sources(False) + _sources(True):
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.keyword)
                and node.arg == "param"
                and isinstance(node.value, ast.Constant)
            ):
                named[node.value.value] = f"{path}:{node.lineno}"
    for path, tree in _sources(False):
        for node in _messages(tree):
            for name in NAMED.findall(node.value):
                named[name] = f"{path}:{node.lineno}"
    return named


def test_every_parameter_an_error_names_has_a_flag_and_every_flag_is_named():
    named = _named_parameters()
    assert {"boxes", "skip_bad", "methods", "precision"} <= set(named)
    missing = {name: where for name, where in named.items() if name not in FLAGS}
    assert not missing, f"add these parameters to FLAGS in xaibench/cli/errors.py: {missing}"
    assert not set(FLAGS) - set(named), "FLAGS lists parameters no error names"


def test_every_flag_of_the_table_is_an_option_of_a_command():
    options = {
        opt
        for target in COMMANDS.values()
        for param in load(target).params
        if isinstance(param, click.Option)
        for opt in param.opts
    }
    assert not set(FLAGS.values()) - options


def test_library_messages_name_parameters_not_flags():
    found = [
        f"{path}:{node.lineno}: {flag}"
        for path, tree in _sources(False)
        for node in _messages(tree)
        for flag in FLAG.findall(COMMAND_LINE.sub("", node.value))
    ]
    assert not found, "write the parameter in backticks (`boxes`), not its flag: " + str(found)
