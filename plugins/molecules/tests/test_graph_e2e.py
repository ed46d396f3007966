"""The bond-generating design through the `fmkit` command: `recipes/molecules_qm9_cpu.yaml` at toy size
on this test's own molecules trains with the pair field (batching, padding, the equivariant OT's
permutation, the discrete path's masks), checkpoints and resumes, samples and prints the generated-bond
and geometry tables beside EDM's, writes an SDF whose bonds and charges are the generated ones, and
`fmkit sample` writes the samples with their pair mask into safetensors and reads them back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fmkit_molecules.xyz import format_xyz

ROOT = Path(__file__).resolve().parents[3]
TOY = ["--set", "trainer.batch_size=4", "--set", "model.hidden=16", "--set", "model.message=16",
       "--set", "model.edge=8", "--set", "model.layers=2", "--set", "trainer.checkpoint_every=3",
       "--set", "trainer.warmup_steps=1", "--set", "trainer.log_every=1", "--set", "eval.num_samples=8",
       "--set", "eval.batch_size=8", "--set", "solver.steps=4", "--set", "trainer.num_workers=0",
       "--set", "trainer.device=cpu", "--set", "trainer.progress=false"]


@pytest.fixture()
def env(tmp_path, small_mols) -> dict[str, str]:
    """Always the test's own molecules (a real QM9 root would cost minutes of bond perception)."""
    root = tmp_path / "data"
    (root / "qm9").mkdir(parents=True)
    (root / "qm9" / "qm9_hcno.xyz").write_text("".join(
        format_xyz(s, p, f"dsgdb9nsd_{i + 1:06d}") for i, (s, p) in enumerate(small_mols.values())))
    return dict(os.environ, COLUMNS="200", FMKIT_NO_PROGRESS="1", FMKIT_DATA_DIR=str(root),
                FMKIT_CACHE_DIR=str(tmp_path / "cache"))


def fmkit(env: dict[str, str], *args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "fmkit", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def row(out: str, name: str) -> float:
    m = re.search(rf"│ {name}\s+│\s+([-0-9.na]+) │", out)
    assert m, f"no row {name!r} in:\n{out}"
    return float(m.group(1))


def test_cpu_recipe_trains_resumes_and_reports_both_protocols_on_generated_graphs(tmp_path, env):
    from rdkit import Chem
    from safetensors.torch import load_file

    run = tmp_path / "run"
    out = fmkit(env, "train", "recipes/molecules_qm9_cpu.yaml", "--out", str(run), "--set", "trainer.steps=6", *TOY)
    assert "trained to step 6" in out
    assert "table 3: generated bonds and charges" in out and "table 4: geometry" in out
    for name in ("graph_validity", "graph_mol_stable", "graph_atom_stable", "atom_stable", "validity"):
        assert 0.0 <= row(out, name) <= 1.0

    # the SDF holds the generated graph: bonds and charges equal the saved samples' upper triangle
    samples = run / "samples"
    flat = load_file(str(samples / "samples_step0000006.safetensors"))
    assert {"bonds", "charges", "masks.bonds", "mask"} <= set(flat)
    bonds, charges, mask, pmask = flat["bonds"].numpy(), flat["charges"].numpy(), flat["mask"].numpy(), \
        flat["masks.bonds"].numpy()
    assert (pmask == (mask[:, :, None] & mask[:, None, :] & np.triu(np.ones(mask.shape[1:] * 2, bool), 1))).all()
    mols = list(Chem.SDMolSupplier(str(samples / "samples_step0000006.sdf"), sanitize=False, removeHs=False))
    assert len(mols) == 8
    for i, mol in enumerate(mols):
        n = int(mask[i].sum())
        assert mol is not None and mol.GetNumAtoms() == n
        want = {(a, b): int(bonds[i, a, b]) for a in range(n) for b in range(a + 1, n) if 1 <= bonds[i, a, b] <= 3}
        got = {tuple(sorted((bd.GetBeginAtomIdx(), bd.GetEndAtomIdx()))): int(bd.GetBondTypeAsDouble())
               for bd in mol.GetBonds()}
        assert got == want
        assert [a.GetFormalCharge() for a in mol.GetAtoms()] == [int(c) - 1 for c in charges[i, :n]]

    out = fmkit(env, "train", "--resume", str(run), "--set", "trainer.steps=8")
    assert "trained to step 8" in out and "table 3: generated bonds and charges" in out

    out = fmkit(env, "evaluate", str(run), "-n", "6", "--steps", "3")
    assert "(6 samples, euler, 3 steps)" in out and 0.0 <= row(out, "graph_validity") <= 1.0

    fmkit(env, "sample", str(run), "-n", "5", "--steps", "3", "--out", "five")
    flat = load_file(str(samples / "five" / "samples.safetensors"))
    assert flat["bonds"].shape[0] == 5 and flat["masks.bonds"].shape == flat["bonds"].shape


def test_self_conditioned_graph_model_trains_and_samples_through_the_cli(tmp_path, env):
    """`model.self_condition` with `objective.self_condition` (SemlaFlow's 0.5), as the CPU recipe ships them,
    trains, samples (each Euler step reads the previous step's estimate) and reports; the model's half alone
    (the objective's turned off) is refused before training."""
    run = tmp_path / "sc"
    out = fmkit(env, "train", "recipes/molecules_qm9_cpu.yaml", "--out", str(run), "--set", "trainer.steps=3", *TOY)
    assert "self_condition: 0.5" in (run / "recipe.yaml").read_text()
    assert "trained to step 3" in out and 0.0 <= row(out, "graph_validity") <= 1.0
    r = subprocess.run([sys.executable, "-m", "fmkit", "train", "recipes/molecules_qm9_cpu.yaml", "--out",
                        str(tmp_path / "half"), "--set", "trainer.steps=3", "--set", "objective={name: cfm}",
                        *TOY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "objective.self_condition" in r.stdout + r.stderr
    assert not (tmp_path / "half" / "checkpoints").exists() or not list((tmp_path / "half" / "checkpoints").iterdir())
