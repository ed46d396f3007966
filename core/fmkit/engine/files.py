"""Files written so that a crash never leaves half of one: fsynced, renamed into place, checksummed.

What checkpoints, pairs shards, recipes, lineage and evaluation markers are written with.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

#: the errors of a full disk or an exhausted quota
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file, fsync, rename); a failed write (a full disk)
    leaves ``path`` as it was and no temporary file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _write_bytes(tmp, text.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_tensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    """``safetensors`` file at ``path``, readable as any other file the process writes (safetensors
    creates it 0600, so a team's shared run directory held weights only their owner could read).
    A failed write raises ``OSError`` with the errno safetensors reports (ENOSPC for a full disk), not
    a ``SafetensorError``, and leaves no partial file at ``path``."""
    try:
        save_file(dict(tensors), str(path))
    except SafetensorError as exc:
        Path(path).unlink(missing_ok=True)
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        num = int(code.group(1))
        raise OSError(num, os.strerror(num), str(path)) from None
    os.chmod(path, 0o666 & ~_UMASK)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk or an exhausted quota."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: once, at import, not while threads write files
    os.umask(mask)
    return mask


_UMASK = _read_umask()
