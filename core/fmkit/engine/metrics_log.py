"""Training logs: ``metrics.csv`` (long format: step,name,value) (the trackers beside it:
:mod:`fmkit.engine.loggers`; the progress bar: :mod:`fmkit.engine.progress`)."""

from __future__ import annotations

import contextlib
import csv
import errno
import os
from collections.abc import Mapping
from pathlib import Path

from fmkit.errors import OutputError, note


class MetricsLogger:
    """Appends ``step,name,value`` rows to ``run_dir/metrics.csv``; on resume, rows written after the
    resumed step are dropped so the log matches the training actually kept, and damaged rows (garbage
    bytes, ``abc,loss,1``) are dropped with a note.

    The rows are also kept in memory: a ``metrics.csv`` deleted (or replaced) while training runs is
    written again whole, with a note, at the next log line. A log that cannot be written raises
    :class:`~fmkit.errors.OutputError` naming the file."""

    HEADER = ["step", "name", "value"]

    def __init__(self, run_dir: Path, truncate_after: int | None = None) -> None:
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: list[list[str]] = []
        if self.path.exists() and truncate_after is not None:
            good, bad = parse_rows(self.path)
            self.rows = [[str(st), n, v] for st, n, v in good if st <= truncate_after]
            if bad:
                note_damaged(self.path, bad, "dropped from the log")
        self._f = None
        self._rewrite()

    def _rewrite(self) -> None:
        """Write every row kept beside the log and rename it into place (a kill during the rewrite never
        empties the log), then append to it."""
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            if self._f is not None:
                self._f.close()
            with open(tmp, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(self.HEADER)
                w.writerows(self.rows)
            os.replace(tmp, self.path)
            self._f = open(self.path, "a", newline="")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise self._unwritable(exc) from None
        self._w = csv.writer(self._f)
        self._inode = os.fstat(self._f.fileno()).st_ino

    def _unwritable(self, exc: OSError) -> OutputError:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        return OutputError(f"cannot write the run's metrics.csv: {exc.strerror or exc}", where=str(self.path),
                           fix="free space on that disk" if full else
                           "make the file and its folder writable (chmod u+w; chattr -i if it was made immutable)")

    def _replaced(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def log(self, step: int, values: Mapping[str, float]) -> None:
        new = [[str(step), k, f"{v:.8g}"] for k, v in values.items()]
        self.rows.extend(new)
        try:
            if self._replaced():  # deleted (or swapped) under a running training: write it again, whole
                note(f"metrics.csv was deleted or replaced while training ran; it is written again with the "
                     f"{len(self.rows)} rows logged so far", where=str(self.path))
                self._rewrite()
            else:
                self._w.writerows(new)
                self._f.flush()
        except OSError as exc:
            raise self._unwritable(exc) from None

    def close(self) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):
                self._f.close()


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        return -1


def parse_rows(path: Path) -> tuple[list[tuple[int, str, str]], list[tuple[int, str]]]:
    """The rows of a ``metrics.csv`` as ``(step, name, value text)``, and the damaged ones as ``(line
    number, text)``: not three fields, a step that is no non-negative integer, a value that is no number,
    bytes that are not UTF-8 text (the header line is not counted)."""
    good: list[tuple[int, str, str]] = []
    bad: list[tuple[int, str]] = []
    with open(path, "rb") as f:
        data = f.read()
    lines = data.decode("utf-8", errors="replace").replace("\0", "\ufffd").splitlines()
    for lineno, row in enumerate(csv.reader(lines), start=1):
        if lineno == 1 and row == MetricsLogger.HEADER:
            continue
        text = ",".join(row)
        ok = len(row) == 3 and row[0].isdigit() and row[1] != "" and "\ufffd" not in text
        if ok:
            try:
                float(row[2])
            except ValueError:
                ok = False
        if ok:
            good.append((int(row[0]), row[1], row[2]))
        elif text.strip():
            bad.append((lineno, text))
    return good, bad


def note_damaged(path: Path, bad: list[tuple[int, str]], what: str) -> None:
    """A note that ``bad`` rows of ``path`` were skipped (``what``: what happened to them)."""
    line, text = bad[0]
    shown = text if len(text) <= 40 else text[:37] + "..."
    note(f"{len(bad)} damaged row(s) of metrics.csv {what} (the first, line {line}: {shown!r})", where=str(path),
         fix="nothing to do: the other rows are used")


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` as ``{name: [(step, value), ...]}``; damaged rows are skipped with a note."""
    out: dict[str, list[tuple[int, float]]] = {}
    p = Path(run_dir) / "metrics.csv"
    if not p.exists():
        return out
    try:
        good, bad = parse_rows(p)
    except OSError as exc:
        raise OutputError(f"cannot read the run's metrics.csv: {exc.strerror or exc}", where=str(p),
                          fix="give this user read permission (chmod u+r)") from None
    if bad:
        note_damaged(p, bad, "skipped")
    for step, name, value in good:
        out.setdefault(name, []).append((step, float(value)))
    return out
