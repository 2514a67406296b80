"""Progress bars: redrawn in place on a terminal, whole periodic lines anywhere else."""

import io

from xaibench.core import progress
from xaibench.core.progress import LineBar, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_the_bar_prints_lines_at_start_periodically_and_at_close(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.std, "time", clock)
    out = io.StringIO()
    bar = progress_bar(total=100, desc="generate", unit="img", file=out)
    assert isinstance(bar, LineBar)
    for _ in range(100):  # 100 updates over 99 s: a line every LINE_SECONDS, none redrawn
        clock.now += 0.99
        bar.update(1)
    bar.close()
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    assert lines[0].startswith("generate:   0%") and "0/100" in lines[0]
    assert lines[-1].startswith("generate: 100%") and "100/100" in lines[-1]
    assert len(lines) == 2 + int(99 // progress.LINE_SECONDS)
    assert len(set(lines)) == len(lines)


def test_on_a_terminal_the_bar_redraws_in_place():
    out = Terminal()
    bar = progress_bar(total=3, desc="evaluate", file=out, mininterval=0)
    assert not isinstance(bar, LineBar)
    bar.update(3)
    bar.close()
    assert "\r" in out.getvalue()


def test_a_disabled_bar_prints_nothing():
    out = io.StringIO()
    bar = progress_bar(total=3, file=out, disable=True)
    bar.update(3)
    bar.close()
    assert out.getvalue() == ""
