"""The progress displays: a stage's own bar shows the time left; the line of stages
shows the stage and the time elapsed only."""

from __future__ import annotations

import io
import re
import sys
import time
from contextlib import ExitStack

from llmnas_transfer.progress import Stages, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _frames(text: str) -> list[str]:
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    return [line.strip() for line in re.split(r"[\r\n]", plain) if line.strip()]


def test_stage_bar_shows_the_time_left(monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    with ExitStack() as stack:
        stages = Stages(True, 2, stack, label="fit")
        assert stages.bar is not None
        stages.advance()
        bar = stages.stage("NUTS, 2 chains", "iterations")
        bar(10, 100)
        time.sleep(0.3)
        bar(50, 100)
        stages.bar.refresh()
    frames = _frames(term.getvalue())
    clock = r"-:--:--|\d+:\d\d:\d\d"  # a time, or no estimate yet
    sub = [f for f in frames if "iterations" in f and "50/100" in f]
    main = [f for f in frames if f.startswith(("NUTS", "⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦",
                                                "⠧", "⠇", "⠏")) and "iterations" not in f]
    assert sub and main, frames
    assert len(re.findall(clock, sub[-1])) == 2, sub[-1]  # elapsed and left
    assert len(re.findall(clock, main[-1])) == 1, main[-1]  # elapsed only


def test_progress_bar_callback_and_off():
    seen = []
    update = progress_bar(lambda done, total: seen.append((done, total)), 4, label="x")
    update(1, 4)
    update(4, 4)
    update(None, 0)
    assert seen == [(1, 4), (4, 4)]
    progress_bar(False, 4, label="x")(1, 4)  # no display, no error
