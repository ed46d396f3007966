"""Writers: the SDF opens in RDKit with the right molecules and coordinates, the XYZ reads back,
the PNG is a real image."""

from __future__ import annotations

import numpy as np
from fmkit_molecules.writers import MoleculeGridWriter, SDFWriter, XYZWriter
from fmkit_molecules.xyz import Record, iter_frames
from molecules_testlib import as_batch
from rdkit import Chem


def samples(small_mols):
    batch = as_batch([small_mols[s] for s in ["CCO", "C=O", "CC(=O)O", "C"]])
    batch["pos"][3, :5] *= 0.1  # a crushed methane (hypervalent H): written, marked invalid
    return batch


def test_sdf(tmp_path, small_mols):
    batch = samples(small_mols)
    (path,) = SDFWriter()(batch, tmp_path, None, step=12)
    assert path.name == "samples_step0000012.sdf"
    mols = list(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False))
    assert len(mols) == 4 and all(m is not None for m in mols)
    assert [m.GetProp("valid") for m in mols] == ["1", "1", "1", "0"]
    assert Chem.CanonSmiles(mols[0].GetProp("smiles")) == "CCO"
    n = int(batch["mask"][0].sum())
    np.testing.assert_allclose(mols[0].GetConformer().GetPositions(), batch["pos"][0, :n].numpy(), atol=1e-4)
    good = Chem.SDMolSupplier(str(path))  # sanitising reader: the valid ones load as molecules
    assert sum(m is not None for m in good) >= 3


def test_xyz_round_trip(tmp_path, small_mols):
    batch = samples(small_mols)
    (path,) = XYZWriter()(batch, tmp_path, None, step=0)
    recs = [r for r in iter_frames(path.read_text().splitlines(), "x") if isinstance(r, Record)]
    assert len(recs) == 4
    assert recs[1].symbols == ("C", "O", "H", "H")
    np.testing.assert_allclose(recs[2].pos, batch["pos"][2, : len(recs[2].symbols)].numpy(), atol=1e-6)


def test_png_grid(tmp_path, small_mols):
    (path,) = MoleculeGridWriter(num=3, per_row=3, size=120)(samples(small_mols), tmp_path, None, step=5)
    data = path.read_bytes()
    assert data[:8] == bytes([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
    from PIL import Image

    img = Image.open(path)
    assert img.size == (360, 120)  # 3 valid molecules in one row
    assert len(np.unique(np.asarray(img.convert("L")))) > 2  # something was drawn


def test_grid_legend_says_when_a_sample_had_several_fragments():
    from fmkit_molecules.rdkit_import import load_chemistry
    from fmkit_molecules.writers import grid_entry

    chem = load_chemistry()
    whole = Chem.AddHs(Chem.MolFromSmiles("CCO.O.[H][H]"))
    m, legend = grid_entry(whole, chem)
    assert legend == "CCO  (largest of 3 fragments)" and m.GetNumAtoms() == 3  # no H drawn
    assert grid_entry(Chem.AddHs(Chem.MolFromSmiles("CCO")), chem)[1] == "CCO"
