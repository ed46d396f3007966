"""Fixtures of the molecules plugin's tests (helpers live in molecules_testlib.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fmkit_molecules.xyz import format_xyz
from molecules_testlib import SMILES, embed

os.environ.setdefault("FMKIT_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def small_mols():
    return {s: embed(s) for s in SMILES}


@pytest.fixture()
def xyz_file(tmp_path: Path, small_mols) -> Path:
    """A plain multi-frame XYZ file of the small molecules (ids dsgdb9nsd_000001 ...)."""
    text = "".join(format_xyz(s, p, f"dsgdb9nsd_{i + 1:06d}") for i, (s, p) in enumerate(small_mols.values()))
    path = tmp_path / "mols.xyz"
    path.write_text(text)
    return path


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("FMKIT_CACHE_DIR", str(d))
    return d
