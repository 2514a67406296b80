"""The README's `xaibench list models` excerpts are the command's output: every row shown is the
row the command prints for that model today, so the support table cannot drift from the code."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"
NOT_ROWS = ("model", "...", "Reasons", "Hugging", "and")
"""First words of the header, the elisions and the closing notes."""
BLOCK = re.compile(r"```\n\$ xaibench list models([^\n]*)\n(.*?)```", re.S)


def excerpts() -> list[tuple[str, list[str]]]:
    """(the command line, its rows) of every `xaibench list models` block of the README."""
    found = []
    for command, body in BLOCK.findall(README.read_text("utf-8")):
        rows = [line for line in body.splitlines() if line and line.split()[0] not in NOT_ROWS]
        found.append((command.split("#")[0].strip(), rows))
    return found


def test_the_readme_shows_torchvision_timm_cnn_and_timm_vit_listings():
    commands = [command for command, _ in excerpts()]
    assert "" in commands and "'timm/resnet1*'" in commands  # torchvision's and timm's CNNs
    assert "'timm/*small_patch16_224'" in commands  # timm's ViTs and DeiTs


@pytest.mark.slow
def test_every_row_of_the_readme_listings_is_what_the_command_prints(invoke):
    for command, rows in excerpts():
        if "--why" in command or not rows:
            continue
        for row in rows:
            name = row.split()[0]
            printed = invoke("list", "models", name).output.splitlines()
            ours = next(line for line in printed if line.split()[0] == name)
            assert ours.split() == row.split(), (command, name)
