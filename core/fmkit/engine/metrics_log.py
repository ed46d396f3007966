"""Training logs: ``metrics.csv`` (long format: step,name,value), TensorBoard when installed, and
the progress bar."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class MetricsLogger:
    """Appends ``step,name,value`` rows to ``run_dir/metrics.csv``; on resume, rows written after the
    resumed step are dropped so the log matches the training actually kept."""

    HEADER = ["step", "name", "value"]

    def __init__(self, run_dir: Path, truncate_after: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        rows: list[list[str]] = []
        if self.path.exists() and truncate_after is not None:
            with open(self.path, newline="") as f:
                r = csv.reader(f)
                next(r, None)
                rows = [row for row in r if len(row) == 3 and _int(row[0]) <= truncate_after]
        # rewrite beside and rename, so a kill during the rewrite never empties the log
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.HEADER)
            w.writerows(rows)
        os.replace(tmp, self.path)
        self._f = open(self.path, "a", newline="")
        self._w = csv.writer(self._f)
        self._tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        except Exception:
            self._tb = None

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for k, v in values.items():
            self._w.writerow([step, k, f"{v:.8g}"])
            if self._tb is not None:
                self._tb.add_scalar(k, v, step)
        self._f.flush()

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        return -1


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` as ``{name: [(step, value), ...]}``."""
    out: dict[str, list[tuple[int, float]]] = {}
    p = Path(run_dir) / "metrics.csv"
    if not p.exists():
        return out
    with open(p, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    return out


class ProgressBar:
    """Rich progress bar with loss, steps/s and ETA; a no-op when disabled."""

    def __init__(self, total: int, start: int = 0, enabled: bool = True, description: str = "training") -> None:
        self.enabled = enabled
        self.total, self.start = total, start
        self.description = description
        self._p: Progress | None = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            # a short bar: the counts, loss, speed and times fit 80 columns (rich cuts columns that do not fit,
            # and "853/3000…" read as a total of 3,000 steps)
            self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=10), MofNCompleteColumn(),
                               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[sps]}"),
                               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
            self._p.start()
            self._task = self._p.add_task(self.description, total=self.total, completed=self.start, loss="-", sps="")
        return self

    def update(self, step: int, loss: float | None = None, steps_per_s: float | None = None) -> None:
        """Advance to ``step``; a ``loss`` or ``steps_per_s`` given refreshes that figure."""
        if self._p is None:
            return
        shown = {}
        if loss is not None:
            shown["loss"] = f"{loss:.4f}" if math.isfinite(loss) else "nan"
        if steps_per_s is not None:
            shown["sps"] = f"{steps_per_s:.2f} steps/s" if steps_per_s else ""
        self._p.update(self._task, completed=step, **shown)

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()
