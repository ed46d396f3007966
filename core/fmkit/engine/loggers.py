"""Where a fit's numbers and sample files go: ``metrics.csv`` (:class:`CsvLogger`, always on) and :class:`Loggers`, which hands every logger the same scalars, sample
files and run record (the resolved recipe and the provenance).

``metrics.csv`` is the record a resume and ``fmkit curves`` read: a failure to write it stops the fit
(the Trainer saves a checkpoint first). A tracker (TensorBoard, W&B, MLflow: :mod:`fmkit.engine.trackers`)
that cannot start stops the fit before its first step; one that raises later is reported once and
switched off, and training and checkpoints go on. A tracker that continues its run on resume stores
its run id in ``RUN/trackers.json`` (:mod:`fmkit.engine.logger_contract`: the contract, :class:`LoggerRun`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fmkit.engine.logger_contract import TRACKERS_FILE, Logger, LoggerRun
from fmkit.engine.metrics_log import MetricsLogger
from fmkit.errors import FmkitError, TrackerError, note

__all__ = ["TRACKERS_FILE", "CsvLogger", "Logger", "LoggerRun", "Loggers"]


class CsvLogger:
    """``RUN/metrics.csv`` (:class:`~fmkit.engine.metrics_log.MetricsLogger`): on a resume the rows after
    the resumed step are dropped, as are damaged rows (with a note)."""

    name = "csv"

    def __init__(self) -> None:
        self.log: MetricsLogger | None = None

    def start(self, run: LoggerRun) -> None:
        self.log = MetricsLogger(run.run_dir, truncate_after=run.step)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self.log is not None:
            self.log.log(step, scalars)

    def finish(self) -> None:
        if self.log is not None:
            self.log.close()
        self.log = None


class Loggers:
    """The loggers of a fit: ``metrics.csv`` always (one :class:`CsvLogger` is added when ``loggers`` has
    none) and the trackers of ``loggers`` (None: none). ``config`` is the record handed
    to each as the run's configuration (a recipe's resolved data; default: the Trainer's fingerprint)."""

    def __init__(self, loggers: Sequence[Logger] | None = None, config: Mapping[str, Any] | None = None) -> None:
        given = list(loggers or [])
        for lg in given:
            if not isinstance(lg, Logger):
                raise TypeError(f"a logger must have name, start, log_scalars and finish, got {type(lg).__name__}")
        csv = [lg for lg in given if isinstance(lg, CsvLogger)]
        self.csv: CsvLogger = csv[0] if csv else CsvLogger()
        self.trackers: list[Logger] = [lg for lg in given if not isinstance(lg, CsvLogger)]
        self.config = dict(config) if config is not None else None
        self.live: list[Logger] = []  # the trackers started and not failed since
        self.active = False

    @classmethod
    def of(cls, value: Loggers | Sequence[Logger] | None) -> Loggers:
        return value if isinstance(value, Loggers) else cls(value)

    def start(self, run_dir: Path, step: int, provenance: Mapping[str, Any] | None,
              fingerprint: Mapping[str, Any] | None = None) -> None:
        """Open ``metrics.csv`` and start every tracker; one that cannot start closes the others and raises
        :class:`~fmkit.errors.TrackerError` (an fmkit error it raised itself passes as it is)."""
        config = self.config if self.config is not None else dict(fingerprint or {})
        run = LoggerRun(Path(run_dir), config, dict(provenance or {}), step)
        self.csv.start(run)
        self.active = True
        for tracker in self.trackers:
            try:
                tracker.start(run)
            except FmkitError:
                self.finish()
                raise
            except Exception as exc:
                self.finish()
                raise TrackerError(f"experiment tracker {tracker.name!r} cannot start: {type(exc).__name__}: {exc}",
                                   where=f"trainer.loggers ({tracker.name}), run {run_dir}",
                                   fix=getattr(tracker, "fix", None) or "check that tracker's options, or remove it "
                                       "from trainer.loggers") from exc
            self.live.append(tracker)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """To metrics.csv (its :class:`~fmkit.errors.OutputError` is raised) and to every live tracker."""
        if not self.active:
            return
        self.csv.log_scalars(step, scalars)
        for tracker in list(self.live):
            self._call(tracker, "log_scalars", step, scalars)

    def log_media(self, step: int, writer: str, paths: Sequence[Path]) -> None:
        """The files a writer made at an evaluation, to the trackers that take media, named ``samples/<writer>``
        (``samples/<writer>/<i>`` for the i-th of several files: one series per file across the steps)."""
        if not self.active:
            return
        names = [f"samples/{writer}" if len(paths) == 1 else f"samples/{writer}/{i}" for i in range(len(paths))]
        for tracker in list(self.live):
            if hasattr(tracker, "log_media"):
                for name, p in zip(names, paths):
                    if tracker in self.live:
                        self._call(tracker, "log_media", step, name, Path(p))

    def finish(self) -> None:
        """Close every tracker and metrics.csv (a fit's end, or an exception ending it)."""
        for tracker in list(self.live):
            self._call(tracker, "finish")
        self.live = []
        self.csv.finish()
        self.active = False

    def _call(self, tracker: Logger, method: str, *args: Any) -> None:
        """``tracker.method(*args)``; an exception switches the tracker off with one note (training goes on)."""
        try:
            getattr(tracker, method)(*args)
        except Exception as exc:
            self.live.remove(tracker)
            note(f"warning: experiment tracker {tracker.name!r} failed in {method} ({type(exc).__name__}: {exc}); "
                 "it is switched off for the rest of this fit, training and checkpoints go on",
                 where=f"trainer.loggers ({tracker.name})",
                 fix="see the tracker's own message above; a resume starts it again")
            if method != "finish":
                with contextlib.suppress(Exception):
                    tracker.finish()
