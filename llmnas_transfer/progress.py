"""The one progress helper: rich bars on stderr, or a user's callback.

:func:`progress_bar` turns a ``progress`` argument (``True``, ``False`` or a callback
``f(done, total)``) into an update function ``update(done, total)``; ``update(None, 0)``
closes the bar. :class:`Stages` shows a multi-stage workflow, one line per stage.
rich is imported only when a bar is shown, so importing this module costs nothing.

Example
-------
>>> seen = []
>>> update = progress_bar(lambda done, total: seen.append(done), 3, label="demo")
>>> update(1, 3); update(3, 3); update(None, 0)
>>> seen
[1, 3]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import ExitStack

#: ``update(done, total)``; ``update(None, 0)`` closes the display
ProgressFn = Callable[[int | None, int], None]


def _noop(done: int | None, total: int) -> None:
    return None


def progress_bar(progress: bool | Callable[[int, int], None], total: int, *, label: str,
                 unit: str = "", items_per_step: float | None = None,
                 item_name: str = "candidates", min_total: int = 1,
                 transient: bool = True) -> ProgressFn:
    """An update function for ``total`` steps.

    Parameters
    ----------
    progress : ``True`` for a rich bar on stderr, ``False`` for none, or a callback
        ``f(done, total)`` that receives every update.
    total : number of steps.
    label : text at the left of the bar.
    unit : word after the ``done/total`` count (e.g. ``"chunks"``).
    items_per_step : when given, the bar shows a rate in ``item_name`` per second,
        measured from the second step on (the first includes compilation).
    min_total : no bar is drawn for fewer steps than this.
    transient : remove the bar when done.
    """
    if callable(progress):
        return lambda done, tot: None if done is None else progress(done, tot)
    if not progress or total < min_total:
        return _noop
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(label + (" [dim]{task.fields[rate]}" if items_per_step else "")),
               BarColumn(), MofNCompleteColumn()]
    if unit:
        columns.append(TextColumn(unit))
    columns += [TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    bar = Progress(*columns, console=Console(stderr=True), transient=transient)
    task = bar.add_task(label, total=total, rate="")
    state: dict[str, float | None] = {"first": None, "t0": None, "d0": None}
    bar.start()

    def update(done: int | None, tot: int) -> None:
        if done is None:
            bar.stop()
            return
        rate = ""
        if items_per_step:
            now = time.perf_counter()
            if state["first"] is None:
                state["first"] = done
            elif state["t0"] is None:  # the first step (with compilation) is not timed
                state["t0"], state["d0"] = now, done
            if state["t0"] is not None and done > state["d0"] and now > state["t0"]:
                per_s = (done - state["d0"]) * items_per_step / (now - state["t0"])
                rate = f"{per_s:.3g} {item_name}/s"
        bar.update(task, completed=done, total=tot or total, rate=rate)

    return update


class Stages:
    """A rich display with one line per stage of a workflow (no-op when disabled or when
    stderr is not a terminal): the stage, a bar of stages done and the time elapsed; a
    stage's own bar (:meth:`stage`) also shows the time left.

    Example
    -------
    >>> from contextlib import ExitStack
    >>> with ExitStack() as stack:
    ...     stages = Stages(False, 2, stack)
    ...     cb = stages.stage("simulating"); cb(1, 2); stages.advance()
    """

    def __init__(self, enabled: bool, total: int, stack: ExitStack, *, label: str = "study"):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            class SubEta(TimeRemainingColumn):  # time left of a stage's own bar only
                def render(self, task):
                    return super().render(task) if task.fields.get("sub") else ""

            self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(), SubEta(),
                                console=Console(stderr=True), transient=True)
            stack.enter_context(self.bar)
            self.main = self.bar.add_task(label, total=total)

    def stage(self, text: str, unit: str | None = None) -> Callable[[int, int], None]:
        """Start a stage; returns a callback ``f(done, total)`` for its own sub-bar,
        labelled ``unit`` (default: the stage's text)."""
        if self.bar is None:
            return lambda done, total: None
        self.bar.update(self.main, description=text)
        sub = self.bar.add_task(f"  {unit or text}", total=None, visible=False, sub=True)

        def cb(done: int, total: int) -> None:
            self.bar.update(sub, completed=done, total=total, visible=total > 1)

        return cb

    def advance(self) -> None:
        """Mark the current stage done."""
        if self.bar is not None:
            self.bar.advance(self.main)
