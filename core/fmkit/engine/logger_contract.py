"""What a logger is (``trainer.loggers``): the :class:`Logger` contract and the :class:`LoggerRun` it is
started with, which keeps a tracker's run id in ``RUN/trackers.json`` for a resume to continue."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

#: ``RUN/trackers.json``: ``{tracker name: {"run_id": ..., ...}}``, what a resume continues
TRACKERS_FILE = "trackers.json"


@dataclass(frozen=True)
class LoggerRun:
    """What a logger is told as a fit starts: the run folder, the resolved recipe (``config``), who made
    the components (``provenance``) and the step the fit starts from (above 0: a resumed run)."""

    run_dir: Path
    config: Mapping[str, Any] = field(default_factory=dict)
    provenance: Mapping[str, Any] = field(default_factory=dict)
    step: int = 0

    @property
    def resume(self) -> bool:
        return self.step > 0

    def stored(self, tracker: str) -> dict[str, Any] | None:
        """What ``tracker`` stored of its run (its run id) when this run started, on a resume; None otherwise."""
        if not self.resume:
            return None
        try:
            record = json.loads((self.run_dir / TRACKERS_FILE).read_text()).get(tracker)
        except (OSError, ValueError, AttributeError):
            return None
        return record if isinstance(record, dict) else None

    def store(self, tracker: str, record: Mapping[str, Any]) -> None:
        """Keep ``record`` (JSON-able: the tracker's run id) in ``RUN/trackers.json`` for a later resume."""
        from fmkit.engine.files import write_atomic_text

        path = self.run_dir / TRACKERS_FILE
        try:
            records = json.loads(path.read_text()) if path.exists() else {}
        except (OSError, ValueError):
            records = {}
        records = records if isinstance(records, dict) else {}
        records[tracker] = dict(record)
        write_atomic_text(path, json.dumps(records, indent=2) + "\n")


@runtime_checkable
class Logger(Protocol):
    """A place a fit's records go (rank 0 of a run with a directory). ``log_media`` is optional: a
    logger without it gets no sample files."""

    name: str

    def start(self, run: LoggerRun) -> None:
        """Open (or, ``run.resume``, continue) the record of ``run``; raise when that cannot be done."""

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record ``scalars`` (loss, lr, ``eval/<metric>``...) at optimizer step ``step``."""

    def finish(self) -> None:
        """Close the record (the fit ended, or stopped: a resume starts it again)."""
