"""Molecule datasets: examples ``{"pos": [n,3], "atoms": [n] or [n,K]}`` (with ``bonds: true`` also
``"charges": [n]`` and ``"bonds": [n,n]``, see :mod:`fmkit_molecules.graph`), padded batches with a
mask, and size-bucketed batch orders.

Positions are centred (zero mean over the real atoms -- EDM's "centre of mass" with unit weights,
the subspace on which the zero-CoM Gaussian source lives), in Angstrom.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from fmkit.plugin import DataError, DataInfo, Dataset, FieldInfo, State, bucketed_batches
from pydantic import BaseModel, ConfigDict, Field

from fmkit_molecules import qm9
from fmkit_molecules.elements import ELEMENTS
from fmkit_molecules.graph import BOND_TYPES, CHARGE_OFFSET, CHARGES, pair_mask
from fmkit_molecules.notes import note
from fmkit_molecules.rdkit_import import load_chemistry

AtomEncoding = Literal["categorical", "onehot"]


class MoleculeDataset(Dataset):
    """Molecules held as a :class:`~fmkit_molecules.qm9.Packed` (concatenated atoms + offsets).

    With ``graph`` (a :class:`~fmkit_molecules.qm9.PackedGraph` aligned with ``packed``) the examples
    also hold ``charges`` and ``bonds``; molecules whose graph could not be assigned are dropped
    (counted in ``graph_dropped``, with a note), so training only sees sanitizable graphs.

    Args:
        packed: all molecules of the source (atoms, positions in Angstrom, ids).
        indices: the molecules of this dataset (a split) into ``packed``; None: all.
        atom_encoding: "categorical" (atom types [n] as class indices) or "onehot" ([n, K] floats).
        max_atoms: the most atoms a molecule may have (a larger one is refused with a DataError).
        name: the dataset's name in notes and errors.
        source: the file it was read from, for notes and errors.
        smiles_cache: name of the on-disk cache of the training SMILES (novelty); None: not cached.
        graph: bonds and charges aligned with ``packed``; None: positions and atoms only.
    """

    def __init__(self, packed: qm9.Packed, indices: Sequence[int] | np.ndarray | None = None, *,
                 atom_encoding: AtomEncoding = "categorical", max_atoms: int = 29, name: str = "molecules",
                 source: str = "", smiles_cache: str | None = None, graph: qm9.PackedGraph | None = None) -> None:
        self.packed = packed
        self.indices = np.arange(len(packed)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.graph = graph
        self.bonds = graph is not None
        self.graph_dropped = 0
        if graph is not None:
            if len(graph) != len(packed):
                raise DataError(f"the bond graph holds {len(graph)} molecules, the packed data {len(packed)}",
                                where=f"dataset {name}", fix="pass the graph qm9.load_graph built for this `packed`")
            ok = graph.ok.numpy()[self.indices] if len(self.indices) else np.zeros(0, dtype=bool)
            self.graph_dropped = int((~ok).sum())
            if self.graph_dropped:
                self.indices = self.indices[ok]
                note(f"dropped {self.graph_dropped:,} of {len(ok):,} molecules of {name}: RDKit could not assign "
                     f"them a neutral, sanitizable bond graph with charges in (-1, 0, +1) from their geometry "
                     f"(default and Hückel connectivity tried), kept {len(self.indices):,}",
                     where=f"dataset {name}" + (f" ({source})" if source else ""),
                     fix="nothing to do: training with bonds sees only molecules with a valid graph "
                         "(fmkit_molecules/perceive.py)")
        self.atom_encoding = atom_encoding
        self.num_classes = len(ELEMENTS)
        counts = (packed.counts[torch.from_numpy(self.indices)] if len(self.indices)
                  else torch.zeros(0, dtype=torch.long))
        self.counts = counts.numpy().astype(np.int64)
        if len(self.counts) and int(self.counts.max()) > max_atoms:
            worst = int(np.argmax(self.counts))
            raise DataError(
                f"molecule {packed.ids[self.indices[worst]]} has {int(self.counts[worst])} atoms, more than "
                f"max_atoms={max_atoms}",
                where=f"dataset {name}" + (f" ({source})" if source else ""),
                fix="raise the dataset option max_atoms (and size the model for it), or filter the data",
            )
        self.source = source
        self.smiles_cache = smiles_cache
        self._novelty_smiles: set[str] | None = None
        atoms_field = (FieldInfo((None,), num_classes=self.num_classes) if atom_encoding == "categorical"
                       else FieldInfo((None, self.num_classes)))
        fields = {"pos": FieldInfo((None, 3)), "atoms": atoms_field}
        meta = {"max_atoms": max_atoms, "elements": list(ELEMENTS), "atom_encoding": atom_encoding,
                "count_histogram": (np.bincount(self.counts, minlength=max_atoms + 1).tolist()
                                    if len(self.counts) else []),
                "name": name, "bonds": self.bonds}
        if self.bonds:
            fields["charges"] = FieldInfo((None,), num_classes=len(CHARGES))
            fields["bonds"] = FieldInfo((None, None), num_classes=len(BOND_TYPES))
            meta.update(bond_types=list(BOND_TYPES), charges=list(CHARGES), graph_dropped=self.graph_dropped)
        self.info = DataInfo(fields=fields, has_mask=True, meta=meta)

    def __len__(self) -> int:
        return len(self.indices)

    def record_id(self, i: int) -> str:
        return self.packed.ids[int(self.indices[i])]

    def __getitem__(self, i: int) -> State:
        m = int(self.indices[i])
        a, b = int(self.packed.offsets[m]), int(self.packed.offsets[m + 1])
        pos = self.packed.pos[a:b].to(torch.float32)
        pos = pos - pos.mean(dim=0, keepdim=True)
        atoms = self.packed.atoms[a:b].to(torch.long)
        if self.atom_encoding == "onehot":
            atoms = torch.nn.functional.one_hot(atoms, self.num_classes).to(torch.float32)
        if self.graph is None:
            return {"pos": pos, "atoms": atoms}
        charges = self.graph.charges[a:b].to(torch.long) + CHARGE_OFFSET
        return {"pos": pos, "atoms": atoms, "charges": charges, "bonds": self.graph.bonds(m, b - a)}

    def collate(self, items: Sequence[State]) -> State:
        """Pad to the batch's largest molecule: pos [B,N,3] float, atoms [B,N] long or [B,N,K] float, mask [B,N] bool
        (with bonds: charges [B,N], bonds [B,N,N] and masks {"bonds": [B,N,N]}; see :func:`collate_molecules`)."""
        return collate_molecules(items)

    def batches(self, epoch: int, batch_size: int, seed: int) -> list[list[int]]:
        """Size-bucketed batches (little padding), a pure function of ``(seed, epoch)``."""
        return bucketed_batches(self.counts, epoch, batch_size, seed, stream=0x6D6F6C)

    def padding_fraction(self, batches: list[list[int]]) -> float:
        """Share of padded atom slots over the given batches."""
        total = real = 0
        for b in batches:
            c = self.counts[b]
            total += int(c.max()) * len(b)
            real += int(c.sum())
        return 1.0 - real / max(total, 1)

    def novelty_smiles(self) -> set[str]:
        """Canonical SMILES (EDM bond rules) of this dataset's own molecules, the novelty reference.

        Metrics get the dataset the model trained on, so the reference is exactly the data trained
        on (its split and limit; all molecules with ``split: all``). Computed once (needs RDKit), and
        cached on disk under ``smiles_cache`` when given.
        """
        if self._novelty_smiles is None:
            chemistry = load_chemistry("novelty (training SMILES)")
            self._novelty_smiles = chemistry.smiles_of_dataset(self, cache_name=self.smiles_cache)
        return self._novelty_smiles


def collate_molecules(items: Sequence[State]) -> State:
    """Pad a list of ``{"pos": [n,3], "atoms": [n] | [n,K]}`` into a batch with ``mask`` [B,N].

    Examples with a graph (``"charges": [n]``, ``"bonds": [n,n]``) give ``charges`` [B,N] long (padding:
    the neutral class), ``bonds`` [B,N,N] long (padding: 0, no bond) and ``masks = {"bonds": pair_mask(mask)}``
    ([B,N,N] bool: ``i < j``, both atoms real).
    """
    b = len(items)
    n = max(int(it["pos"].shape[0]) for it in items)
    a0 = items[0]["atoms"]
    pos = items[0]["pos"].new_zeros((b, n, 3))
    atoms = a0.new_zeros((b, n, *a0.shape[1:]))
    mask = torch.zeros((b, n), dtype=torch.bool)
    for i, it in enumerate(items):
        k = int(it["pos"].shape[0])
        pos[i, :k] = it["pos"]
        atoms[i, :k] = it["atoms"]
        mask[i, :k] = True
    out: State = {"pos": pos, "atoms": atoms, "mask": mask}
    if "bonds" in items[0]:
        charges = torch.full((b, n), CHARGE_OFFSET, dtype=torch.long)
        bonds = torch.zeros((b, n, n), dtype=torch.long)
        for i, it in enumerate(items):
            k = int(it["pos"].shape[0])
            charges[i, :k] = it["charges"]
            bonds[i, :k, :k] = it["bonds"]
        out["charges"] = charges
        out["bonds"] = bonds
        out["masks"] = {"bonds": pair_mask(mask)}  # type: ignore[assignment]
    if "cond" in items[0]:
        out["cond"] = torch.stack([it["cond"] for it in items])
    return out


class QM9Options(BaseModel):
    """Options of the ``qm9`` dataset."""

    model_config = ConfigDict(extra="forbid")

    split: Literal["train", "valid", "test", "all"] = "train"
    atom_encoding: AtomEncoding = "categorical"
    root: str | None = Field(None, description="data root holding qm9/ "
                                               "(default: $FMKIT_DATA_DIR, else ~/.cache/fmkit/data)")
    prefer: Literal["auto", "tar", "xyz"] = "auto"
    download: bool = Field(False, description="download the original release into the data root if missing")
    max_atoms: int = Field(29, ge=1)
    limit: int | None = Field(None, ge=1, description="keep only the first `limit` molecules of the split in id "
                              "order; in QM9 these are the smallest molecules (mean 12.4 atoms at 512, 18.1 overall)")
    cache: bool = True
    bonds: bool = Field(False, description="also serve the bond graph and formal charges derived from the geometry "
                        "(RDKit, cached on first use); molecules without a valid graph are dropped")


def build_qm9(split: str = "train", atom_encoding: AtomEncoding = "categorical", root: str | None = None,
              prefer: str = "auto", download: bool = False, max_atoms: int = 29, limit: int | None = None,
              cache: bool = True, bonds: bool = False) -> MoleculeDataset:
    """QM9 3-D molecules (Ramakrishnan et al. 2014) with the EDM train/valid/test proportions; with
    ``bonds`` also their bond graph and formal charges (:func:`~fmkit_molecules.qm9.load_graph`).

    Args:
        split: "train", "valid", "test" or "all" (EDM proportions, fixed by molecule id).
        atom_encoding: "categorical" (class indices) or "onehot".
        root: the data root holding qm9/; None: ``$FMKIT_DATA_DIR``, else ``~/.cache/fmkit/data``.
        prefer: which file to read when both exist: "tar" (the original release), "xyz" or "auto" (tar first).
        download: download the original release into the data root if no QM9 file is there.
        max_atoms: the most atoms a molecule may have.
        limit: keep only the first ``limit`` molecules of the split in id order (QM9's smallest); None: all.
        cache: read and write the parsed molecules, graphs and SMILES caches.
        bonds: also serve the bond graph and charges (molecules without a valid graph are dropped).

    Returns:
        The split as a MoleculeDataset (positions centred, in Angstrom).
    """
    folder = qm9.data_dir(root)
    try:
        path = qm9.find_source(folder, prefer)
    except DataError:
        if not download:
            raise
        qm9.download(folder)  # only when the root holds no usable QM9 file
        path = qm9.find_source(folder, prefer)
    packed = qm9.load(path, use_cache=cache)
    idx = qm9.split_indices(packed.ids, split)
    if limit is not None:
        idx = idx[:limit]  # the split is in id order: QM9's first ids are its smallest molecules
    graph = qm9.load_graph(path, packed, use_cache=cache) if bonds else None
    return MoleculeDataset(packed, idx, atom_encoding=atom_encoding, max_atoms=max_atoms, name=f"qm9[{split}]",
                           source=str(path), smiles_cache=qm9.smiles_cache_name(path, split, limit) if cache else None,
                           graph=graph)


def from_records(records: Sequence, *, bonds: bool = False, **kwargs) -> MoleculeDataset:
    """A dataset over in-memory :class:`~fmkit_molecules.xyz.Record` objects (tests, library use);
    ``bonds`` perceives their graph in memory."""
    packed = qm9.pack(records, "records")
    qm9.report_skipped(packed, "records")
    graph = qm9.load_graph(None, packed, use_cache=False) if bonds else None
    return MoleculeDataset(packed, graph=graph, **kwargs)


class XYZMoleculesOptions(BaseModel):
    """Options of the ``xyz_molecules`` dataset (a local multi-frame XYZ file)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    split: Literal["train", "valid", "test", "all"] = "all"
    atom_encoding: AtomEncoding = "categorical"
    max_atoms: int = Field(29, ge=1)
    bonds: bool = Field(False, description="also serve the bond graph and formal charges derived from the geometry "
                        "(RDKit, cached on first use); molecules without a valid graph are dropped")


def build_xyz(path: str, split: str = "all", atom_encoding: AtomEncoding = "categorical",
              max_atoms: int = 29, bonds: bool = False) -> MoleculeDataset:
    """Molecules of a multi-frame XYZ file, cut into the QM9 split proportions (by record id).

    Args:
        path: the multi-frame XYZ file (count line, comment, ``El x y z`` lines in Angstrom).
        split: "train", "valid", "test" or "all".
        atom_encoding: "categorical" (class indices) or "onehot".
        max_atoms: the most atoms a molecule may have.
        bonds: also perceive and serve the bond graph and charges (in memory, not cached).

    Returns:
        The split as a MoleculeDataset (positions centred, in Angstrom).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"no such XYZ file: {p}", where="dataset xyz_molecules.path",
                        fix="give the path of a multi-frame XYZ file (count line, comment, 'El x y z' lines)")
    packed = qm9.load(p, use_cache=False)
    graph = qm9.load_graph(p, packed, use_cache=False) if bonds else None  # computed in memory, like the parse
    return MoleculeDataset(packed, qm9.split_indices(packed.ids, split), atom_encoding=atom_encoding,
                           max_atoms=max_atoms, name=f"xyz[{split}]", source=str(p), graph=graph)
