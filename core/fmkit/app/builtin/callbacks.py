"""The core's trainer callbacks: the wall-clock guard any recipe may name (``wall_clock_limit``)."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from fmkit.engine.callbacks import Callback


class WallClockOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    minutes: float = Field(..., gt=0.0, description="stop training (checkpoint + final evaluation) after this long")


class WallClockLimit(Callback):
    """Ends training once ``minutes`` of wall-clock time have passed since ``fit`` started: a CPU
    budget ("<= 60 minutes on 2 cores") that holds even when shared cores run slower than the pilot. The run
    then says "stopped at step N of M by the wall-clock guard (58 minutes)" in its final table, checkpoint
    and ``stopped.json``, and its metrics are those of step N."""

    def __init__(self, minutes: float) -> None:
        self.minutes = float(minutes)
        self.start: float | None = None

    def on_train_start(self, trainer) -> None:
        self.start = time.monotonic()

    def on_step_end(self, trainer, step: int) -> None:
        if self.start is not None and time.monotonic() - self.start > 60.0 * self.minutes:
            trainer.request_stop(f"the wall-clock guard ({self.minutes:g} minutes)")
