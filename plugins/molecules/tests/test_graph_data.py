"""Bonds and charges derived from 3-D geometry (perceive.py), their cache beside the parse cache
(qm9.load_graph), and the datasets serving them (``bonds: true``): known answers on hand-built
molecules, refusal of radicals, the Hückel retry, the cache round trip and its invalidation,
padding with the pair mask, and molecules without a graph dropped and counted."""

from __future__ import annotations

import lzma
import os

import numpy as np
import pytest
import torch
from fmkit.testing import check_dataset
from fmkit_molecules import perceive, qm9
from fmkit_molecules.data import build_qm9, build_xyz, from_records
from fmkit_molecules.elements import INDEX
from fmkit_molecules.graph import pair_mask
from fmkit_molecules.xyz import Record, format_xyz
from molecules_testlib import embed, record
from rdkit import Chem


def _perceive(smiles: str) -> tuple[np.ndarray, perceive.Graph | None]:
    syms, pos = embed(smiles)
    atoms = np.array([INDEX[s] for s in syms])
    return atoms, perceive.perceive(atoms, pos)


def _heavy_bonds(atoms: np.ndarray, g: perceive.Graph) -> list[int]:
    """Sorted orders of the bonds between heavy atoms."""
    heavy = np.nonzero(atoms > 0)[0]
    sub = g.bonds[np.ix_(heavy, heavy)]
    return sorted(sub[np.triu_indices(len(heavy), 1)][sub[np.triu_indices(len(heavy), 1)] > 0].tolist())


def _check_graph(atoms: np.ndarray, g: perceive.Graph) -> None:
    assert g.bonds.dtype == np.int8 and g.charges.dtype == np.int8
    assert (g.bonds == g.bonds.T).all() and (np.diag(g.bonds) == 0).all()
    # every hydrogen has exactly one single bond
    assert (g.bonds[atoms == 0].astype(bool).sum(1) == 1).all()


@pytest.mark.parametrize("smiles, heavy_orders", [
    ("CCO", [1, 1]),  # ethanol: C-C, C-O
    ("CC#N", [1, 3]),  # acetonitrile: the triple bond
    ("O=C=O", [2, 2]),
])
def test_known_molecules_get_their_bond_orders_and_no_charges(smiles, heavy_orders):
    atoms, g = _perceive(smiles)
    assert g is not None and g.method == "default"
    _check_graph(atoms, g)
    assert _heavy_bonds(atoms, g) == heavy_orders
    assert (g.charges == 0).all()


def test_benzene_is_kekulized_to_alternating_single_and_double_bonds():
    atoms, g = _perceive("c1ccccc1")
    assert g is not None
    ring = np.nonzero(atoms == INDEX["C"])[0]
    sub = g.bonds[np.ix_(ring, ring)]
    assert sorted(sub[np.triu_indices(6, 1)][sub[np.triu_indices(6, 1)] > 0].tolist()) == [1, 1, 1, 2, 2, 2]
    # alternating: each ring carbon has exactly one double and one single ring bond
    assert ((sub == 2).sum(1) == 1).all() and ((sub == 1).sum(1) == 1).all()
    assert set(np.unique(g.bonds).tolist()) <= {0, 1, 2}  # no aromatic class: orders 1/2 only


@pytest.mark.parametrize("smiles", ["C[N+](=O)[O-]", "[NH3+]CC(=O)[O-]"])  # nitromethane, glycine zwitterion
def test_charge_separated_molecules_get_plus_and_minus_one(smiles):
    atoms, g = _perceive(smiles)
    assert g is not None
    _check_graph(atoms, g)
    assert sorted(g.charges[g.charges != 0].tolist()) == [-1, 1]
    assert int(g.charges[atoms == INDEX["N"]][0]) == 1 and int(g.charges.sum()) == 0


@pytest.mark.parametrize("smiles", ["[CH3]", "C[CH2]"])  # methyl and ethyl radicals
def test_radical_geometries_are_refused(smiles):
    assert _perceive(smiles)[1] is None


def test_strained_cage_needs_the_hueckel_retry():
    """Bicyclo[1.1.1]pentane (QM9 dsgdb9nsd_000105): connect-the-dots bonds its bridgeheads, 1.9 Å
    apart, and the molecule does not sanitize; Hückel connectivity gives the right 6 C-C bonds."""
    atoms, g = _perceive("C1C2CC1C2")
    assert g is not None and g.method == "hueckel"
    _check_graph(atoms, g)
    assert _heavy_bonds(atoms, g) == [1] * 6 and (g.charges == 0).all()


def test_graph_rebuilt_from_the_arrays_sanitizes_and_gives_the_molecule():
    atoms, g = _perceive("CC(N)=O")
    mol = perceive.molecule_from_graph(atoms, g.bonds, g.charges)
    Chem.SanitizeMol(mol)
    assert Chem.MolToSmiles(Chem.RemoveHs(mol)) == Chem.MolToSmiles(Chem.MolFromSmiles("CC(N)=O"))
    # a graph with a missing bond leaves an atom short of valence: a radical, refused
    broken = g.bonds.copy()
    i, j = np.argwhere(np.triu(broken, 1) > 0)[0]
    broken[i, j] = broken[j, i] = 0
    assert perceive.graph_sanitizes(atoms, g.bonds, g.charges)
    assert not perceive.graph_sanitizes(atoms, broken, g.charges)


def test_parallel_chunks_give_the_same_graphs_as_one_process(small_mols, monkeypatch):
    packed = qm9.pack([Record(f"m{i}", tuple(s), p) for i, (s, p) in enumerate(small_mols.values())], "t")
    args = (packed.atoms.numpy(), packed.pos.numpy(), packed.offsets.numpy())
    monkeypatch.setattr(perceive, "CHUNK", 3)  # 7 chunks over 2 worker processes
    done: list[int] = []
    two = perceive.perceive_packed(*args, processes=2, progress=done.append)
    one = perceive.perceive_chunk(*args)
    assert sum(done) == len(packed) and len(done) == 7
    for f in ("edge_counts", "edges", "orders", "charges", "ok", "method"):
        assert np.array_equal(getattr(one, f), getattr(two, f)), f
    assert one.ok.all()


def _work_reporting_signals(args):
    """perceive's worker function, also returning the worker's SIGTERM/SIGINT handlers."""
    import signal

    return perceive.perceive_chunk(*args), (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))


def test_pool_workers_drop_the_clis_signal_handlers(small_mols, monkeypatch):
    """The CLI turns SIGTERM into KeyboardInterrupt; forked workers inherited that, so the pool's
    SIGTERM at shutdown printed a KeyboardInterrupt traceback per worker into training logs.
    A worker must end on SIGTERM by default and leave Ctrl-C to the parent."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    packed = qm9.pack([Record(f"m{i}", tuple(s), p) for i, (s, p) in enumerate(small_mols.values())], "t")
    monkeypatch.setattr(perceive, "CHUNK", 3)
    seen = []
    monkeypatch.setattr(perceive, "_work", _work_reporting_signals)
    monkeypatch.setattr(perceive, "_concat", lambda parts: seen.extend(h for _, h in parts))
    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        perceive.perceive_packed(packed.atoms.numpy(), packed.pos.numpy(), packed.offsets.numpy(), processes=2)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen and all(h == (signal.SIG_DFL, signal.SIG_IGN) for h in seen), seen


# -- the datasets ----------------------------------------------------------------------------------

def test_collate_pads_graph_fields_and_gives_the_pair_mask(xyz_file):
    ds = build_xyz(str(xyz_file), bonds=True)
    assert ds.graph_dropped == 0 and len(ds) == 20
    it = ds[10]  # benzene
    assert it["bonds"].shape == (12, 12) and it["bonds"].dtype == torch.long and it["charges"].dtype == torch.long
    assert (it["charges"] == 1).all()  # class index = charge + 1
    batch = ds.collate([ds[0], ds[3], ds[10]])  # CH4 (5 atoms), C2H4 (6), benzene (12)
    assert batch["bonds"].shape == (3, 12, 12) and batch["charges"].shape == (3, 12)
    mask = batch["mask"]
    assert torch.equal(batch["masks"]["bonds"], pair_mask(mask))
    assert int(batch["masks"]["bonds"][0].sum()) == 5 * 4 // 2 and int(batch["masks"]["bonds"][2].sum()) == 66
    assert torch.equal(batch["bonds"], batch["bonds"].transpose(1, 2))
    pad = ~(mask[:, :, None] & mask[:, None, :])
    assert (batch["bonds"][pad] == 0).all() and (batch["charges"][~mask] == 1).all()
    assert torch.equal(batch["bonds"][1, :6, :6], ds[3]["bonds"])
    assert int((batch["bonds"][1] == 2).sum()) == 2  # ethylene's C=C, both triangles
    info = ds.info
    assert info.fields["bonds"].shape == (None, None) and info.fields["bonds"].num_classes == 4
    assert info.fields["charges"].shape == (None,) and info.fields["charges"].num_classes == 3
    assert info.meta["bonds"] is True and info.meta["bond_types"] == ["none", "single", "double", "triple"]
    assert info.meta["charges"] == [-1, 0, 1]
    check_dataset(ds, batch_size=4)  # the core's dataset contract accepts the (None, None) field and `masks`


def test_onehot_atoms_with_bonds(xyz_file):
    ds = build_xyz(str(xyz_file), atom_encoding="onehot", bonds=True)
    batch = ds.collate([ds[0], ds[10]])
    assert batch["atoms"].shape == (2, 12, 5) and batch["atoms"].is_floating_point()
    assert batch["bonds"].shape == (2, 12, 12)
    assert "charges" not in build_xyz(str(xyz_file))[0] and build_xyz(str(xyz_file)).info.meta["bonds"] is False


def test_molecules_without_a_graph_are_dropped_and_counted(capsys):
    syms, pos = embed("C")
    radical = Record("dsgdb9nsd_000003", tuple(syms[:-1]), pos[:-1])  # methane less one H: a methyl radical
    recs = [record("CCO", "dsgdb9nsd_000001"), record("CC#N", "dsgdb9nsd_000002"), radical]
    ds = from_records(recs, bonds=True)
    assert ds.graph_dropped == 1 and len(ds) == 2 and ds.info.meta["graph_dropped"] == 1
    assert [ds.record_id(i) for i in range(len(ds))] == ["dsgdb9nsd_000001", "dsgdb9nsd_000002"]
    assert ds.counts.tolist() == [9, 6]
    err = capsys.readouterr().err
    assert "dropped 1 of 3 molecules" in err and "sanitizable bond graph" in err
    plain = from_records(recs)
    assert len(plain) == 3 and plain.graph_dropped == 0  # positions only: nothing dropped
    assert "dropped" not in capsys.readouterr().err


def _qm9_root(tmp_path, small_mols, monkeypatch):
    root = tmp_path / "data"
    (root / "qm9").mkdir(parents=True)
    src = root / "qm9" / "qm9_hcno.xyz.xz"
    text = "".join(format_xyz(s, p, f"dsgdb9nsd_{i + 1:06d}") for i, (s, p) in enumerate(small_mols.values()))
    with lzma.open(src, "wt") as f:
        f.write(text)
    monkeypatch.setenv("FMKIT_DATA_DIR", str(root))
    return src


def test_graph_cache_round_trip_stale_and_mismatched(tmp_path, cache, small_mols, monkeypatch, capsys):
    src = _qm9_root(tmp_path, small_mols, monkeypatch)
    build_qm9(split="all")  # positions only: no graph is perceived nor cached
    assert not list(cache.rglob("*graph*"))
    ds = build_qm9(split="all", bonds=True)
    gfile = qm9.graph_cache_file(src)
    assert gfile.is_file() and gfile.name == f"{qm9.cache_key(src)}-graph{qm9.GRAPH_VERSION}.pt"
    assert (cache / "qm9" / f"{qm9.cache_key(src)}.pt").is_file()  # the parse cache is unchanged beside it
    first = [ds[i] for i in range(len(ds))]

    def boom(*a, **k):
        raise AssertionError("perceived again despite the cache")

    monkeypatch.setattr(qm9, "perceive_graph", boom)
    again = build_qm9(split="all", bonds=True)
    for a, b in zip(first, (again[i] for i in range(len(again))), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("pos", "atoms", "charges", "bonds"))
    # a graph cache of another data set (wrong counts) is not trusted: rebuilt, with a note
    torch.save({**torch.load(gfile, weights_only=True), "molecules": 3}, gfile)
    with pytest.raises(AssertionError, match="perceived again"):
        build_qm9(split="all", bonds=True)
    assert "ignoring an unusable graph cache" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setenv("FMKIT_DATA_DIR", str(src.parent.parent))
    monkeypatch.setenv("FMKIT_CACHE_DIR", str(cache))
    # the source changing (a new key) rebuilds both caches and removes the old ones
    stale = sorted(f.name for f in (cache / "qm9").iterdir())
    os.utime(src, (1, 1))
    build_qm9(split="all", bonds=True)
    names = sorted(f.name for f in (cache / "qm9").iterdir())
    assert names == sorted([f"{qm9.cache_key(src)}.pt", qm9.graph_cache_file(src).name]) and not set(stale) & set(names)
    # a graph cache of an older GRAPH_VERSION (same key) goes when the new graph cache is written
    older = qm9.graph_cache_file(src).with_name(f"{qm9.cache_key(src)}-graph{qm9.GRAPH_VERSION - 1}.pt")
    older.write_bytes(b"old rules")
    qm9.graph_cache_file(src).unlink()
    build_qm9(split="all", bonds=True)
    assert not older.exists() and qm9.graph_cache_file(src).is_file()


def test_without_rdkit_a_cached_graph_is_read_and_a_missing_one_says_what_to_install(
        tmp_path, cache, small_mols, monkeypatch):
    import sys

    import fmkit_molecules
    from fmkit.errors import DependencyError

    src = _qm9_root(tmp_path, small_mols, monkeypatch)
    with_rdkit = build_qm9(split="all", bonds=True)  # perceives and caches the graph
    monkeypatch.setitem(sys.modules, "rdkit", None)  # any `import rdkit...` now raises ImportError
    monkeypatch.delitem(sys.modules, "fmkit_molecules.perceive")
    monkeypatch.delattr(fmkit_molecules, "perceive")
    cached = build_qm9(split="all", bonds=True)  # a training host without RDKit reads the cache
    assert torch.equal(cached[10]["bonds"], with_rdkit[10]["bonds"])
    qm9.graph_cache_file(src).unlink()
    with pytest.raises(DependencyError, match="RDKit is needed to derive bonds") as e:
        build_qm9(split="all", bonds=True)
    assert "pip install rdkit" in e.value.fix
