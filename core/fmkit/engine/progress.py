"""What a long loop shows while it runs: a rich progress bar on a terminal, else (the bar turned off, or output
going to a file) a one-line heartbeat every few minutes — so no phase of a run (training, a plugin's
classifier) is silent for half an hour. Used by the :class:`~fmkit.engine.trainer.Trainer` and, through
:mod:`fmkit.plugin`, by plugins' own loops."""

from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from rich import get_console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

#: seconds between heartbeat lines by default (``trainer.heartbeat_s``)
HEARTBEAT_S = 120.0


def clock(seconds: float) -> str:
    """``1:02:03`` (hours shown only when there are any)."""
    s = max(0, int(round(seconds)))
    h, m = divmod(s, 3600)
    m, s = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """Progress of ``total`` steps (from ``start``), with the loss, steps/s and an ETA.

    Shown as a rich bar when ``enabled`` and the output is a terminal; otherwise, when ``heartbeat_s`` > 0,
    as a line ``description step 120/700 (17%), loss 0.1234, 0.21 steps/s, elapsed 9:31, eta 45:52`` at most
    every ``heartbeat_s`` seconds (and at the end of a loop that had any), on ``stream`` (default stdout).
    Nothing at all when
    ``heartbeat_s`` is 0 and the bar is off. The speed of the heartbeat is measured over this loop's own
    steps (from ``start``), so its ETA counts checkpoints and evaluations too.

    Args:
        total: the last step.
        start: the step the loop starts at (a resumed run's).
        enabled: show the bar (on a terminal); False: only heartbeats.
        description: the loop's name, first on the bar and in each heartbeat line.
        heartbeat_s: seconds between heartbeat lines when the bar is not shown; 0 turns them off.
        stream: where heartbeat lines go (default ``sys.stdout`` at the time of each line).
    """

    #: seconds between the heartbeats of :meth:`optional` bars (tests set it on the class)
    default_heartbeat_s: float = HEARTBEAT_S

    def __init__(self, total: int, start: int = 0, enabled: bool = True, description: str = "training",
                 heartbeat_s: float = HEARTBEAT_S, stream: TextIO | None = None) -> None:
        self.total, self.start, self.step = total, start, start
        self.description, self.heartbeat_s, self.stream = description, heartbeat_s, stream
        self.enabled = enabled
        self.loss: float | None = None
        self._p: Progress | None = None
        self._t0 = self._last = time.monotonic()
        self._beats = 0

    @classmethod
    def optional(cls, total: int, show: bool, description: str) -> ProgressBar:
        """A library function's bar: shown (or its heartbeats) when ``show`` (a command line's call), else silent."""
        return cls(total, enabled=show, description=description, heartbeat_s=cls.default_heartbeat_s if show else 0.0)

    def __enter__(self) -> ProgressBar:
        self._t0 = self._last = time.monotonic()
        console = get_console()
        if self.enabled and (console.is_terminal or console.is_jupyter):
            # a short bar: the counts, loss, speed and times fit 80 columns (rich cuts columns that do not fit,
            # and "853/3000…" read as a total of 3,000 steps)
            self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=10), MofNCompleteColumn(),
                               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[sps]}"),
                               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
            self._p.start()
            self._task = self._p.add_task(self.description, total=self.total, completed=self.start, loss="-", sps="")
        return self

    @property
    def beating(self) -> bool:
        """Whether heartbeat lines stand in for the bar."""
        return self._p is None and self.heartbeat_s > 0

    def update(self, step: int, loss: float | None = None, steps_per_s: float | None = None) -> None:
        """Advance to ``step``; a ``loss`` or ``steps_per_s`` given refreshes that figure."""
        self.step = step
        if loss is not None:
            self.loss = loss
        if self._p is not None:
            shown = {}
            if loss is not None:
                shown["loss"] = f"{loss:.4f}" if math.isfinite(loss) else "nan"
            if steps_per_s is not None:
                shown["sps"] = f"{steps_per_s:.2f} steps/s" if steps_per_s else ""
            self._p.update(self._task, completed=step, **shown)
        elif self.beating and time.monotonic() - self._last >= self.heartbeat_s:
            self.beat()

    def beat(self) -> None:
        """Write one heartbeat line now."""
        now = time.monotonic()
        self._last, self._beats = now, self._beats + 1
        elapsed, done = now - self._t0, self.step - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.description} step {self.step}/{self.total} ({100 * self.step / max(self.total, 1):.0f}%)"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}" if math.isfinite(self.loss) else "loss nan")
        parts.append(f"{rate:.2f} steps/s" if rate >= 0.01 else f"{60 * rate:.2f} steps/min")
        parts.append(f"elapsed {clock(elapsed)}")
        if rate > 0 and self.step < self.total:
            parts.append(f"eta {clock((self.total - self.step) / rate)}")
        print(", ".join(parts), file=self.stream or sys.stdout, flush=True)

    def __exit__(self, kind: type | None, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()
        elif self._beats and kind is None and self.step > self.start:
            self.beat()  # where a loop long enough to have had heartbeats ended (a short one stays quiet)
