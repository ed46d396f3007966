"""Files written so that a crash never leaves half of one: fsynced, renamed into place, checksummed.

What checkpoints, pairs shards, recipes, lineage and evaluation markers are written with.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor


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
    """Replace ``path`` with ``text`` atomically (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_bytes(tmp, text.encode("utf-8"))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_tensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    """``safetensors`` file at ``path``, readable as any other file the process writes (safetensors
    creates it 0600, so a team's shared run directory held weights only their owner could read)."""
    save_file(dict(tensors), str(path))
    os.chmod(path, 0o666 & ~_UMASK)


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: once, at import, not while threads write files
    os.umask(mask)
    return mask


_UMASK = _read_umask()
