"""One trainer per run directory: an advisory lock held for the whole of a fit.

Two ``fmkit train --resume`` of the same run (a job resubmitted twice) would interleave their
checkpoints and ``metrics.csv``. The lock is ``fcntl.flock`` on ``RUN/.lock``: the kernel drops it
when its process dies, SIGKILL included, so a killed run never leaves a stale lock behind. The file
holds the holder's PID, host and start time for the refusal message. On a file system without
``flock`` (some network mounts) or a platform without ``fcntl`` the lock is skipped, as nothing else
can hold it there.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from fmkit.errors import TrainingError

LOCK_FILE = ".lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


class RunLock:
    """``with RunLock(run_dir):`` holds the run exclusively, or raises :class:`TrainingError`
    naming the process (PID, host, since when) that holds it."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None or self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise TrainingError(
                f"another fmkit process is training this run: {holder}", where=str(self.path.parent),
                fix="wait for it to finish, or stop it (e.g. kill its PID) and resume; two trainers on one run "
                    "would interleave its checkpoints and metrics.csv") from None
        except OSError:  # flock not supported here (a network file system): nothing can hold it either
            os.close(fd)
            return
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"PID {info['pid']} on host {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not written its PID yet"
