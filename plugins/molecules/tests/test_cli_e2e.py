"""The QM9 pipeline through the `fmkit` command, as a user runs it: `fmkit train
recipes/molecules_qm9_smoke.yaml` trains on real QM9 molecules when $FMKIT_DATA_DIR holds them (else
on this test's own molecules, written where the recipe looks for QM9), samples, writes SDF/XYZ/PNG,
prints both metric tables; `--resume` continues it; `fmkit evaluate` prints the tables again.

Run with ``-s`` to see the tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fmkit_molecules import qm9
from fmkit_molecules.metrics import MoleculeMetrics
from fmkit_molecules.xyz import format_xyz

ROOT = Path(__file__).resolve().parents[3]
DATA = os.environ.get("FMKIT_DATA_DIR")
REAL = bool(DATA) and any((Path(DATA) / "qm9" / n).is_file() for n in (qm9.QM9_TAR, *qm9.XYZ_NAMES))
TABLE1 = ["atom_stable", "mol_stable", "validity", "uniqueness", "valid_unique", "num_molecules"]
((TITLE2, TABLE2),) = MoleculeMetrics.tables.items()


@pytest.fixture()
def env(tmp_path, small_mols) -> dict[str, str]:
    e = dict(os.environ, COLUMNS="200", FMKIT_NO_PROGRESS="1")
    if not REAL:  # the test's 20 molecules as a QM9 multi-frame XYZ, and a cache of their own
        root = tmp_path / "data"
        (root / "qm9").mkdir(parents=True)
        (root / "qm9" / "qm9_hcno.xyz").write_text("".join(
            format_xyz(s, p, f"dsgdb9nsd_{i + 1:06d}") for i, (s, p) in enumerate(small_mols.values())))
        e.update(FMKIT_DATA_DIR=str(root), FMKIT_CACHE_DIR=str(tmp_path / "cache"))
    return e


def fmkit(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "fmkit", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def table_values(out: str, names: list[str]) -> dict[str, float]:
    """The value printed in the row of each name (rich's box-drawn table)."""
    vals = {}
    for name in names:
        m = re.search(rf"│ {name}\s+│\s+([0-9.]+) │", out)
        assert m, f"no row {name!r} in:\n{out}"
        vals[name] = float(m.group(1))
    return vals


def test_smoke_recipe_trains_samples_writes_and_prints_both_tables(tmp_path, env):
    run = tmp_path / "run"
    small = [] if REAL else ["--set", "trainer.batch_size=4"]  # 15 training molecules here, not 512
    out = fmkit(env, "train", "recipes/molecules_qm9_smoke.yaml", "--out", str(run), *small)
    assert "trained to step 40" in out
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000000040"
    first, second = out.index("evaluation at step 40"), out.index(TITLE2)
    assert first < second
    t1, t2 = table_values(out[first:second], TABLE1), table_values(out[second:], TABLE2)
    assert t1["num_molecules"] == 16 and all(0 <= v <= 1 for v in [*t2.values(), t1["validity"]])

    samples = run / "samples"
    from rdkit import Chem

    sdf = Chem.SDMolSupplier(str(samples / "samples_step0000040.sdf"), sanitize=False, removeHs=False)
    mols = [m for m in sdf]
    assert len(mols) == 16 and all(m is not None and m.GetNumAtoms() > 0 for m in mols)
    assert (samples / "samples_step0000040.xyz").read_text().count("sample_") == 16
    assert (samples / "molecules_step0000040.png").stat().st_size > 1000

    out = fmkit(env, "train", "--resume", str(run), "--set", "trainer.steps=44")
    assert "trained to step 44" in out and TITLE2 in out
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000000044"

    out = fmkit(env, "evaluate", str(run), "-n", "8", "--steps", "5")
    assert "step_000000044 (8 samples, euler, 5 steps)" in out
    assert table_values(out, TABLE1)["num_molecules"] == 8
    table_values(out[out.index(TITLE2):], TABLE2)
