"""Helpers of the image plugin's tests (a module of its own: ``from conftest import ...`` would get
whichever plugin's conftest pytest loaded last when the root runs every plugin's tests)."""

import os
from pathlib import Path


def real_mnist() -> Path | None:
    d = os.environ.get("FMKIT_DATA_DIR")
    p = Path(d) / "mnist" if d else None
    return p if p is not None and p.is_dir() else None
