"""Real QM9 from $FMKIT_DATA_DIR/qm9 (skipped when absent): counts, split sizes, padding of bucketed
batches, and the EDM metrics of real molecules (the "data" row on a slice of the test split)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from fmkit_molecules import qm9
from fmkit_molecules.data import build_qm9
from fmkit_molecules.metrics import MoleculeMetrics

ROOT = os.environ.get("FMKIT_DATA_DIR")
HAVE = bool(ROOT) and any((Path(ROOT) / "qm9" / n).is_file() for n in (qm9.QM9_TAR, *qm9.XYZ_NAMES))
pytestmark = pytest.mark.skipif(not HAVE, reason="no QM9 under $FMKIT_DATA_DIR/qm9")


@pytest.fixture(scope="module")
def train():
    return build_qm9(split="train")


def test_counts_and_split(train):
    src = Path(train.source).name
    total = len(train.packed)
    if src == "qm9_hcno.xyz.xz":  # the H/C/N/O subset documented in its SOURCE.txt
        assert total == 128_744 and train.packed.skipped == 0
        assert sorted(set(train.packed.atoms.unique().tolist())) == [0, 1, 2, 3]
    sizes = qm9.split_sizes(total)
    assert len(train) == sizes[0]
    assert len(build_qm9(split="test")) == sizes[2]
    assert int(train.packed.counts.max()) == 29 and int(train.packed.counts.min()) >= 1
    first = build_qm9(split="all")[0]  # dsgdb9nsd_000001 is methane
    assert first["atoms"].tolist() == [1, 0, 0, 0, 0]
    assert torch.allclose(first["pos"].mean(0), torch.zeros(3), atol=1e-5)


def test_bucketed_padding_on_real_data(train):
    batches = train.batches(epoch=0, batch_size=256, seed=0)
    frac = train.padding_fraction(batches)
    print(f"QM9 train, batch 256: padding fraction {frac:.4%}")
    assert frac < 0.02


def test_data_row_slice():
    test = build_qm9(split="test", limit=400)
    batch = test.collate([test[i] for i in range(len(test))])
    r = MoleculeMetrics(novelty=False)(batch, test)
    print({k: round(v, 4) for k, v in r.items()})
    # EDM reports 99.0% atom / 95.2% molecule stability and 97.7% validity for QM9 itself
    assert r["atom_stable"] > 0.98 and r["mol_stable"] > 0.9 and r["validity"] > 0.95
    assert r["uniqueness"] > 0.98 and r["rdkit_validity"] > 0.9
