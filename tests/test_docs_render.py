"""README.md and docs/*.md render under CommonMark as written: every `##`-and-deeper heading line
of the source is a heading of the rendered document (an unclosed code fence turns the rest of a
file into code), and every code fence closes before the file ends."""

import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
HEADING = re.compile(r"^(#{2,6}) (\S.*?)\s*$")


def rendered(path: Path) -> list:
    return MarkdownIt("commonmark").parse(path.read_text("utf-8"))


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_heading_survives_rendering(path):
    tokens = rendered(path)
    headings = [
        (len(token.markup), tokens[i + 1].content)
        for i, token in enumerate(tokens)
        if token.type == "heading_open" and token.markup.startswith("#")
    ]
    written = [
        (len(m.group(1)), m.group(2))
        for line in path.read_text("utf-8").splitlines()
        if (m := HEADING.match(line))
    ]
    assert [h for h in headings if h[0] >= 2] == written
    assert headings and headings[0][0] == 1  # the title


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: p.name)
def test_every_code_fence_closes(path):
    lines = path.read_text("utf-8").splitlines()
    for token in rendered(path):
        if token.type == "fence":
            start, end = token.map
            closing = lines[end - 1].strip() if end <= len(lines) else ""
            assert end - start >= 2 and closing.startswith(token.markup[:3]), (
                f"{path.name}: the fence opened at line {start + 1} does not close"
            )
