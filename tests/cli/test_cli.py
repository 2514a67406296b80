"""The `xaibench` group: every command has help and is in the README; library errors are one line."""

import click
import pytest

from xaibench.cli import cli

MODEL = "tiny_models:tiny_cnn"


def test_every_command_has_help(invoke):
    for command in cli.list_commands(click.Context(cli)):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_library_errors_become_one_line_and_exit_code_2(image_folder, monkeypatch, capsys):
    from xaibench.cli import main

    monkeypatch.setattr(
        "sys.argv",
        [
            "xaibench",
            "generate",
            "--model",
            MODEL,
            "--saliency",
            "gradcm",
            "--data",
            str(image_folder),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.count("\n") == 0
        and err.startswith("error: --saliency: unknown method 'gradcm'")
        and "gradcam" in err
    )


def test_readme_documents_every_command():
    from pathlib import Path

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert readme.lstrip().startswith("# xaibench")
    assert "make demo" in readme and "make test" in readme
    for command in cli.list_commands(click.Context(cli)):
        assert f"xaibench {command}" in readme, command


def test_readme_names_every_method():
    from pathlib import Path

    from xaibench.methods import METHODS

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name in METHODS.names():
        assert f"`{name}`" in readme, name
