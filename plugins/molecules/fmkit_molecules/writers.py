"""Sample writers: ``writer(samples, out_dir, dataset, step) -> list[Path]``.

- ``sdf``: one SD file per sample set (3-D coordinates, properties ``valid`` and ``smiles``): the
  generated bonds (Kekule orders) and formal charges when the samples carry ``bonds`` and
  ``charges``, EDM bonds inferred from distances otherwise;
- ``xyz``: one multi-frame XYZ file per sample set;
- ``mol_grid``: a PNG grid of 2-D depictions of the first valid molecules (hydrogens hidden), of
  the generated graph when there is one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fmkit_molecules.elements import ELEMENTS
from fmkit_molecules.rdkit_import import load_chemistry
from fmkit_molecules.samples import MolGraph, has_graph, unpad, unpad_graphs
from fmkit_molecules.xyz import format_xyz

class Written(NamedTuple):
    """One sample as the writers see it: ``mol`` to write (with conformer; the generated graph as
    generated, Kekule orders and charges, or EDM bonds), ``valid``, its ``smiles`` (None if invalid)
    and ``drawn``, the sanitised molecule to depict (None if invalid)."""

    mol: Any
    valid: bool
    smiles: str | None
    drawn: Any


def molecules(samples: dict, max_items: int | None = None) -> list[Written]:
    """One :class:`Written` per sample: the generated graph when the samples carry ``bonds`` and
    ``charges``, else EDM bonds inferred from distances (invalid ones keep their raw bonds)."""
    chemistry = load_chemistry()
    if has_graph(samples):
        return [_graph_written(g, chemistry) for g in unpad_graphs(samples, max_items)]
    out = []
    for pos, types in unpad(samples, max_items):
        if (types < 0).any():
            types = np.where(types < 0, 0, types)  # a leftover mask token is drawn as H; it is not valid
            valid_types = False
        else:
            valid_types = True
        order = chemistry.bond_orders(pos, types)
        mol = chemistry.build_molecule(types, order, pos)
        smi = chemistry.sanitized_smiles(mol) if valid_types else None
        if smi is None:
            mol.UpdatePropertyCache(strict=False)
        out.append(Written(mol, smi is not None, smi, mol if smi is not None else None))
    return out


def _graph_written(g: MolGraph, chemistry) -> Written:  # noqa: ANN001 - the lazily imported module
    """The generated graph as written: Kekule orders and charges exactly as generated, radicals marked
    (``M  RAD``), no implicit H; a leftover mask token is written as H / no bond / charge 0, invalid."""
    from rdkit import Chem

    types = np.where(g.types < 0, 0, g.types)
    bonds = np.where(g.bonds < 0, 0, g.bonds)
    mol = chemistry.graph_molecule(types, bonds, g.charges, g.pos)
    drawn = chemistry.sanitized_copy(mol) if g.in_vocab and len(types) else None
    mol.UpdatePropertyCache(strict=False)
    Chem.AssignRadicals(mol)
    smi = chemistry.canonical_smiles(drawn) if drawn is not None else None
    return Written(mol, drawn is not None, smi, drawn)


class SDFOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_items: int | None = Field(None, ge=1)


class SDFWriter:
    """All samples into ``samples_step<step>.sdf`` (open with ``rdkit.Chem.SDMolSupplier``)."""

    def __init__(self, max_items: int | None = None) -> None:
        self.max_items = max_items

    def __call__(self, samples: dict, out_dir: Path, dataset=None, step: int = 0) -> list[Path]:
        items = molecules(samples, self.max_items)  # RDKit is imported here
        from rdkit import Chem

        path = Path(out_dir) / f"samples_step{step:07d}.sdf"
        w = Chem.SDWriter(str(path))
        w.SetKekulize(False)
        for i, it in enumerate(items):
            m = Chem.Mol(it.mol)
            m.SetProp("_Name", f"sample_{i}")
            m.SetProp("valid", str(int(it.valid)))
            m.SetProp("smiles", it.smiles or "")
            w.write(m)
        w.close()
        return [path]


class XYZWriter:
    """All samples into ``samples_step<step>.xyz`` (multi-frame, Angstrom)."""

    def __init__(self, max_items: int | None = None) -> None:
        self.max_items = max_items

    def __call__(self, samples: dict, out_dir: Path, dataset=None, step: int = 0) -> list[Path]:
        path = Path(out_dir) / f"samples_step{step:07d}.xyz"
        frames = []
        for i, (pos, types) in enumerate(unpad(samples, self.max_items)):  # no RDKit needed
            syms = [ELEMENTS[t] if t >= 0 else "X" for t in types.tolist()]
            frames.append(format_xyz(syms, pos, f"sample_{i}"))
        path.write_text("".join(frames))
        return [path]


class GridOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    num: int = Field(16, ge=1, le=100, description="molecules shown")
    per_row: int = Field(4, ge=1)
    size: int = Field(250, ge=50, description="pixels per molecule")


def grid_entry(mol, chemistry):  # noqa: ANN001, ANN201 - RDKit types, imported lazily
    """(2-D depiction, legend) of one sample: its largest fragment without H, which is what validity
    judges; the legend says when the sample had more fragments (a grid of clean small molecules
    otherwise hid samples in 14 pieces)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    pieces = len(Chem.GetMolFrags(mol))
    m = Chem.RemoveHs(chemistry.largest_fragment(mol))
    m.RemoveAllConformers()
    AllChem.Compute2DCoords(m)
    return m, Chem.MolToSmiles(m) + (f"  (largest of {pieces} fragments)" if pieces > 1 else "")


class MoleculeGridWriter:
    """PNG grid of 2-D depictions of the first ``num`` valid samples (largest fragment, no H; the
    legend says when a sample had several fragments)."""

    def __init__(self, num: int = 16, per_row: int = 4, size: int = 250) -> None:
        self.num, self.per_row, self.size = num, per_row, size

    def __call__(self, samples: dict, out_dir: Path, dataset=None, step: int = 0) -> list[Path]:
        chemistry = load_chemistry()
        from rdkit import Chem
        from rdkit.Chem import Draw

        mols, legends = [], []
        for it in molecules(samples):
            if not it.valid:
                continue
            m, legend = grid_entry(Chem.Mol(it.drawn), chemistry)
            mols.append(m)
            legends.append(legend)
            if len(mols) >= self.num:
                break
        path = Path(out_dir) / f"molecules_step{step:07d}.png"
        if not mols:  # still write a file so the run shows that nothing was valid
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(4, 1))
            ax.axis("off")
            ax.text(0.5, 0.5, f"step {step}: no valid molecule", ha="center", va="center")
            fig.savefig(path)
            plt.close(fig)
            return [path]
        img = Draw.MolsToGridImage(mols, molsPerRow=min(self.per_row, len(mols)),
                                   subImgSize=(self.size, self.size), legends=legends)
        img.save(str(path))
        return [path]
