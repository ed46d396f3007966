import os
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FMKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fmkit-cache"))


def real_mnist() -> Path | None:
    d = os.environ.get("FMKIT_DATA_DIR")
    p = Path(d) / "mnist" if d else None
    return p if p is not None and p.is_dir() else None
