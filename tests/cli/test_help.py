"""Every command's --help renders, documents every option, shows every default and fits the
width it is drawn at."""

import click
import pytest
from click.testing import CliRunner

from xaibench.cli import cli

WIDTH = 98
"""The widest help click draws: the group's `max_content_width` (100) less its 2 margin columns."""
CONTEXT = click.Context(cli)
COMMAND_NAMES = cli.list_commands(CONTEXT)


def has_default(option: click.Option) -> bool:
    """A default the user would want to see: not a flag, not "unset" and not empty."""
    default = option.default
    unset = default is None or default == () or repr(default) == "Sentinel.UNSET"
    return not (option.is_flag or unset)


@pytest.mark.parametrize("name", [None, *COMMAND_NAMES])
def test_help_renders_within_its_width(name):
    args = [name, "--help"] if name else ["--help"]
    result = CliRunner().invoke(cli, args, terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    long = [line for line in result.output.splitlines() if len(line) > WIDTH]
    assert not long, long


@pytest.mark.parametrize("name", COMMAND_NAMES)
def test_every_option_has_help_and_a_shown_default(name):
    command = cli.get_command(CONTEXT, name)
    options = [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]
    assert options
    no_help = [o.opts[0] for o in options if not (o.help or "").strip()]
    assert not no_help, f"{name}: options without help: {no_help}"
    hidden = [
        o.opts[0]
        for o in options
        if has_default(o) and not o.show_default and "default" not in (o.help or "").lower()
    ]
    assert not hidden, f"{name}: defaults not shown: {hidden}"
    rendered = CliRunner().invoke(cli, [name, "--help"], terminal_width=WIDTH).output
    for option in options:
        if has_default(option) and option.show_default:
            assert f"{option.opts[0]}" in rendered and "[default:" in rendered
