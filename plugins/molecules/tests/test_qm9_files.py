"""Reading QM9 files: extended XYZ inside a tar.bz2, plain multi-frame XYZ (.xz), failures, cache, split."""

from __future__ import annotations

import io
import lzma
import os
import re
import stat
import tarfile
import warnings

import numpy as np
import pytest
from fmkit.plugin import DataError
from fmkit_molecules import qm9
from fmkit_molecules.data import build_qm9, build_xyz
from fmkit_molecules.xyz import Failure, Record, iter_frames, parse_frame
from molecules_testlib import embed


def extended_xyz(idx: int, syms: list[str], pos: np.ndarray, star: bool = True) -> str:
    """A QM9-style extended XYZ file: properties on line 2, Mulliken charges, `*^` exponents, trailing lines."""
    props = "\t".join(["157.7118", "157.70997", "157.70699", "0.", "13.21", "-0.3877", "0.1171", "0.5048",
                       "35.3641", "0.044749", "-40.47893", "-40.476062", "-40.475117", "-40.498597", "6.469"])
    lines = [str(len(syms)), f"gdb {idx}\t{props}"]
    for k, (s, (x, y, z)) in enumerate(zip(syms, pos)):
        xs = f"{x:.10f}"
        if star and k == 0:  # QM9 writes tiny numbers with a Mathematica exponent
            xs = f"{x * 1e6:.6f}*^-6"
        lines.append(f"{s}\t{xs}\t{y:.10f}\t{z:.10f}\t-0.535689")
    lines += ["1341.307\t1341.3284\t1341.365", "C\tC", "InChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4"]
    return "\n".join(lines) + "\n"


def make_tar(path, files: dict[str, str]) -> None:
    with tarfile.open(path, "w:bz2") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_extended_xyz_frame_parses_properties_line_charges_and_star_exponent():
    syms, pos = embed("CO")
    lines = extended_xyz(7, syms, pos).splitlines()
    rec, nxt = parse_frame(lines, 0, "fallback")
    assert isinstance(rec, Record)
    assert rec.id == "dsgdb9nsd_000007"
    assert rec.symbols == tuple(syms)
    np.testing.assert_allclose(rec.pos, pos, atol=1e-6)  # `*^-6` read as e-6, 5th column ignored
    assert nxt == len(syms) + 2


def test_multi_frame_resyncs_after_bad_records():
    syms, pos = embed("C")
    good = "5\ndsgdb9nsd_000001\n" + "\n".join(f"{s} {x} {y} {z}" for s, (x, y, z) in zip(syms, pos))
    bad_count = "five\ndsgdb9nsd_000002\nC 0 0 0"
    bad_coord = "2\ndsgdb9nsd_000003\nC 0 0 zero\nH 0 0 1"
    text = "\n".join([good, bad_count, bad_coord, good.replace("000001", "000004")])
    items = list(iter_frames(text.splitlines(), "t.xyz"))
    recs = [i for i in items if isinstance(i, Record)]
    fails = [i for i in items if isinstance(i, Failure)]
    assert [r.id for r in recs] == ["dsgdb9nsd_000001", "dsgdb9nsd_000004"]
    assert len(fails) == 2 and fails[1].id == "dsgdb9nsd_000003"


def test_tar_bz2_of_extended_xyz(tmp_path, cache, capsys):
    root = tmp_path / "data"
    (root / "qm9").mkdir(parents=True)
    files = {}
    for i, smi in enumerate(["C", "O", "CC", "C=O", "CO"], start=1):
        syms, pos = embed(smi)
        files[f"dsgdb9nsd_{i:06d}.xyz"] = extended_xyz(i, syms, pos)
    files["dsgdb9nsd_000006.xyz"] = "3\ngdb 6\nC 0 0 0\nH 0 0"  # broken: truncated atom line
    tar = root / "qm9" / qm9.QM9_TAR
    make_tar(tar, files)
    packed = qm9.load(tar, use_cache=False)
    assert len(packed) == 5 and packed.skipped == 1
    assert re.search(r"note:.*skipped 1 unreadable.*dsgdb9nsd_000006", capsys.readouterr().err)
    assert packed.ids[0] == "dsgdb9nsd_000001"
    assert packed.counts.tolist() == [5, 3, 8, 4, 6]


def test_tarball_of_wrong_size_is_a_data_error(tmp_path):
    folder = tmp_path / "qm9"
    folder.mkdir()
    make_tar(folder / qm9.QM9_TAR, {"dsgdb9nsd_000001.xyz": "1\ngdb 1\nH 0 0 0\n"})
    with pytest.raises(DataError, match="partial download"):
        qm9.find_source(folder)
    # the xyz preference ignores it and reports what is there
    with pytest.raises(DataError, match="no QM9 data"):
        qm9.find_source(folder, prefer="xyz")


def _write_xz(path, small_mols, extra: str = "") -> None:
    from fmkit_molecules.xyz import format_xyz

    text = "".join(format_xyz(s, p, f"dsgdb9nsd_{i + 1:06d}") for i, (s, p) in enumerate(small_mols.values()))
    with lzma.open(path, "wt") as f:
        f.write(text + extra)


def test_xz_root_read_only_cached_and_noted(tmp_path, cache, small_mols, monkeypatch, capsys):
    root = tmp_path / "ro"
    (root / "qm9").mkdir(parents=True)
    src = root / "qm9" / "qm9_hcno.xyz.xz"
    _write_xz(src, small_mols, extra="2\ndsgdb9nsd_009999\nC 0 0 nan\nH 0 0 1\n")
    os.chmod(root / "qm9", stat.S_IRUSR | stat.S_IXUSR)  # a read-only data root
    monkeypatch.setenv("FMKIT_DATA_DIR", str(root))
    try:
        ds = build_qm9(split="all")
        assert re.search(r"skipped 1 unreadable record\(s\).*dsgdb9nsd_009999", capsys.readouterr().err)
        assert len(ds) == len(small_mols)
        assert list(cache.rglob("*.pt")), "processed tensors are cached under FMKIT_CACHE_DIR"

        def boom(*a, **k):
            raise AssertionError("parsed again despite the cache")

        monkeypatch.setattr(qm9, "pack", boom)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds2 = build_qm9(split="all")
        assert len(ds2) == len(ds)
        assert "skipped 1 unreadable" in capsys.readouterr().err  # from the cache, too
        # touching the source (new mtime) invalidates the key
        os.chmod(root / "qm9", stat.S_IRWXU)
        os.utime(src, (1, 1))
        with pytest.raises(AssertionError, match="parsed again"):
            build_qm9(split="all")
    finally:
        os.chmod(root / "qm9", stat.S_IRWXU)


def test_missing_root_and_missing_files_are_data_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("FMKIT_DATA_DIR", raising=False)
    monkeypatch.setenv("FMKIT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="FMKIT_DATA_DIR") as e:  # default root: the cache, empty
        build_qm9()
    assert "figshare" in str(e.value) and str(tmp_path / "cache" / "data" / "qm9") in str(e.value)
    monkeypatch.setenv("FMKIT_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="no QM9 data") as e:
        build_qm9()
    assert qm9.QM9_TAR in str(e.value) and qm9.QM9_URL in str(e.value)


def test_unknown_element_and_too_many_atoms(tmp_path, cache):
    p = tmp_path / "s.xyz"
    p.write_text("2\ndsgdb9nsd_000001\nS 0 0 0\nH 0 0 1.3\n")
    with pytest.raises(DataError, match="element 'S'.*dsgdb9nsd_000001|dsgdb9nsd_000001.*element 'S'"):
        build_xyz(str(p))
    syms, pos = embed("CCCC")  # 14 atoms
    from fmkit_molecules.xyz import format_xyz

    p.write_text(format_xyz(syms, pos, "dsgdb9nsd_000002"))
    with pytest.raises(DataError, match="14 atoms, more than max_atoms=10"):
        build_xyz(str(p), max_atoms=10)


def test_split_is_deterministic_disjoint_and_in_edm_proportions():
    ids = [f"dsgdb9nsd_{i:06d}" for i in range(1, 130_832)]
    parts = {s: qm9.split_indices(ids, s) for s in ("train", "valid", "test")}
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [100_000, 17_748, 13_083]  # EDM's sizes
    allidx = np.concatenate(list(parts.values()))
    assert len(np.unique(allidx)) == len(ids)
    # the split depends on ids, not on file order
    shuffled = list(np.random.default_rng(1).permutation(ids))
    test2 = {shuffled[i] for i in qm9.split_indices(shuffled, "test")}
    assert test2 == {ids[i] for i in parts["test"]}
    assert qm9.split_sizes(128_744) == (98_405, 17_465, 12_874)


def test_download_checks_size_and_checksum_and_leaves_nothing_behind(tmp_path):
    fake = tmp_path / "fake.tar.bz2"
    fake.write_bytes(b"not the QM9 release")
    folder = tmp_path / "root" / "qm9"
    with pytest.raises(DataError, match="does not match.*expected 86,144,227 bytes"):
        qm9.download(folder, url=fake.as_uri())
    assert list(folder.iterdir()) == []  # neither the .part file nor a bad tarball stays
    with pytest.raises(DataError, match="download of .* failed"):
        qm9.download(folder, url=(tmp_path / "missing").as_uri())


def test_truncated_archive_is_a_data_error_naming_the_file(tmp_path, cache, monkeypatch):
    import lzma

    root = tmp_path / "data"
    (root / "qm9").mkdir(parents=True)
    payload = lzma.compress(("3\ndsgdb9nsd_000001\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n" * 200).encode())
    bad = root / "qm9" / "qm9_hcno.xyz.xz"
    bad.write_bytes(payload[: len(payload) // 2])
    monkeypatch.setenv("FMKIT_DATA_DIR", str(root))
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        build_qm9(split="all")
    assert str(bad) in str(e.value)
    # figshare serves the tarball, not this file: the fix says to copy it again or switch to the tarball
    assert "copy qm9_hcno.xyz.xz again" in e.value.fix and "cannot download it" in e.value.fix
    assert f"{qm9.QM9_TAR} instead" in e.value.fix


def test_a_corrupt_xyz_file_of_the_users_own_gets_no_qm9_advice(tmp_path):
    """xyz_molecules reads any XYZ file: a broken one of the user's is not told to switch to QM9's
    tarball with `download: true`, an option that dataset does not have."""
    from fmkit_molecules.data import build_xyz

    payload = lzma.compress(("3\nwater\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n" * 200).encode())
    bad = tmp_path / "mine.xyz.xz"
    bad.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        build_xyz(str(bad))
    assert "copy mine.xyz.xz again" in e.value.fix
    assert "download" not in e.value.fix.replace("cannot download it", "") and qm9.QM9_TAR not in e.value.fix


# -- frames whose count does not match their atom lines (one failure each, reading resumes) -------

def _frame(count: int | str, comment: str, syms, pos, trailer: str = "") -> str:
    atoms = "".join(f"{s} {x:.6f} {y:.6f} {z:.6f}\n" for s, (x, y, z) in zip(syms, pos))
    return f"{count}\n{comment}\n{atoms}{trailer}"


@pytest.mark.parametrize("count", [3, 7])  # too few: methane cut off; too many: it would swallow NH3
def test_wrong_count_fails_its_frame_once_and_the_next_frames_are_read(tmp_path, small_mols, count, capsys):
    (sc, pc), (sn, pn), (so, po) = small_mols["C"], small_mols["N"], small_mols["O"]
    text = (_frame(count, "dsgdb9nsd_000001", sc, pc) + _frame(4, "dsgdb9nsd_000002", sn, pn)
            + _frame(3, "dsgdb9nsd_000003", so, po))
    items = list(iter_frames(text.splitlines(), "t.xyz"))
    fails = [i for i in items if isinstance(i, Failure)]
    assert [(type(i).__name__, i.id) for i in items] == [
        ("Failure", "dsgdb9nsd_000001"), ("Record", "dsgdb9nsd_000002"), ("Record", "dsgdb9nsd_000003")]
    assert f"says {count} atoms, 5 atom lines follow" in fails[0].reason
    path = tmp_path / "t.xyz"
    path.write_text(text)
    ds = build_xyz(str(path))
    assert len(ds) == 2 and ds.packed.skipped == 1  # skipped = molecules lost
    assert ds.packed.counts.tolist() == [4, 3]
    assert "skipped 1 unreadable record(s)" in capsys.readouterr().err


def test_qm9_ids_name_failures_and_extended_trailers_are_not_records(small_mols):
    """Extended-XYZ records one after another (as in a concatenation of dsgdb9nsd_*.xyz): their
    frequency / SMILES / InChI lines are no records; a broken count line loses only its molecule."""
    recs = [extended_xyz(i, *small_mols[s], star=False) for i, s in enumerate(["C", "O", "CC", "CO"], start=1)]
    recs[1] = "three" + recs[1][1:]  # water's count line broken
    recs[2] = "9" + recs[2][1:]  # ethane has 8 atoms
    items = list(iter_frames("".join(recs).splitlines(), "cat.xyz"))
    assert [(type(i).__name__, i.id) for i in items] == [
        ("Record", "dsgdb9nsd_000001"), ("Failure", "dsgdb9nsd_000002"), ("Failure", "dsgdb9nsd_000003"),
        ("Record", "dsgdb9nsd_000004")]
    assert items[3].symbols == tuple(small_mols["CO"][0])


def test_tarball_member_with_a_wrong_count_is_skipped(tmp_path):
    syms, pos = embed("C")
    text = extended_xyz(1, syms, pos)
    tar = tmp_path / qm9.QM9_TAR
    make_tar(tar, {"dsgdb9nsd_000001.xyz": "3" + text[1:], "dsgdb9nsd_000002.xyz": extended_xyz(2, *embed("O"))})
    packed = qm9.load(tar, use_cache=False)
    assert packed.ids == ["dsgdb9nsd_000002"] and packed.skipped == 1
    assert packed.failures[0].startswith("dsgdb9nsd_000001: line 1: the count line says 3 atoms, 5 atom lines")


def test_atomic_numbers_are_elements(tmp_path):
    p = tmp_path / "z.xyz"
    p.write_text("3\ndsgdb9nsd_000001\n8 0 0 0\n1 0.96 0 0\n1 -0.24 0.93 0\n"
                 "2\ndsgdb9nsd_000002\n6 0 0 0\n8 1.13 0 0\n")
    ds = build_xyz(str(p))
    assert ds.packed.skipped == 0
    assert ds.packed.atoms.tolist() == [3, 0, 0, 1, 3]  # O H H, C O
    for z, sym in [("16", "S"), ("17", "Cl")]:  # outside the vocabulary: the same error as the symbol
        errors = []
        for el in (z, sym):
            p.write_text(f"2\ndsgdb9nsd_000003\n{el} 0 0 0\nH 0 0 1.3\n")
            with pytest.raises(DataError, match=f"dsgdb9nsd_000003 has element '{sym}', outside the vocabulary") as e:
                build_xyz(str(p))
            errors.append(str(e.value))
        assert errors[0] == errors[1]


# -- skipped records: noted on every load, in fmkit's what / where / fix form ----------------------

def test_skipped_records_are_noted_on_every_load(tmp_path, cache, small_mols, monkeypatch, capsys):
    root = tmp_path / "data"
    (root / "qm9").mkdir(parents=True)
    src = root / "qm9" / "qm9_hcno.xyz.xz"
    _write_xz(src, small_mols, extra="3\ndsgdb9nsd_009999\nC 0 0 0\nH 0 0 1\n")  # 3 announced, 2 given
    monkeypatch.setenv("FMKIT_DATA_DIR", str(root))
    for load in ("parsed", "cached"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a note, not a Python warning
            ds = build_qm9(split="all")
        err = capsys.readouterr().err
        assert len(ds) == len(small_mols) and ds.packed.skipped == 1, load
        assert "note: skipped 1 unreadable record(s)" in err and "dsgdb9nsd_009999" in err, load
        assert f"where: {src}" in err and "fix:" in err, load
        assert "UserWarning" not in err and "warnings.warn" not in err, load
    assert len(list(cache.rglob("*.pt"))) == 1


# -- a data root that cannot hold a download ---------------------------------------------------------

def test_download_into_a_root_that_is_a_file_is_a_data_error(tmp_path, monkeypatch):
    blocker = tmp_path / "data"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FMKIT_DATA_DIR", str(blocker))
    monkeypatch.setenv("FMKIT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataError, match="cannot download QM9 into") as e:
        build_qm9(download=True)
    msg = str(e.value)
    assert f"{blocker} is a file, not a folder" in msg and str(blocker / "qm9") in msg
    assert "FMKIT_DATA_DIR" in e.value.fix and qm9.QM9_TAR in e.value.fix
    assert blocker.read_text() == "not a folder"


def test_download_into_an_unwritable_root_is_a_data_error(tmp_path, monkeypatch):
    fake = tmp_path / "fake.tar.bz2"
    fake.write_bytes(b"x")
    folder = tmp_path / "root" / "qm9"
    monkeypatch.setattr(qm9.os, "access", lambda *a, **k: False)  # as a non-root user without write permission
    with pytest.raises(DataError, match=f"cannot download QM9 into {folder}: {tmp_path} is not writable"):
        qm9.download(folder, url=fake.as_uri())
    assert not (tmp_path / "root").exists()  # nothing created before the download can happen
    monkeypatch.undo()

    def denied(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(qm9.Path, "mkdir", denied)  # e.g. a root-squashed network mount
    with pytest.raises(DataError, match="cannot download QM9 into.*PermissionError: Permission denied") as e:
        qm9.download(folder, url=fake.as_uri())
    assert "writable folder" in e.value.fix


# -- parse caches: a new one replaces the older ones of the same source file ------------------------

def test_new_cache_removes_the_stale_caches_of_its_source_only(tmp_path, cache, small_mols):
    src = tmp_path / "qm9_hcno.xyz.xz"
    _write_xz(src, small_mols)
    other = tmp_path / "other" / "qm9_hcno.xyz.xz"  # same name, another file: its caches stay
    other.parent.mkdir()
    _write_xz(other, small_mols)
    qm9.load(src)
    qm9.load(other)
    old_key = qm9.cache_key(src)
    folder = cache / "qm9"
    (folder / f"{old_key}-train.smi").write_text("C\n")  # training SMILES of the old version
    unrelated = [folder / "notes.txt", folder / "qm9_hcno.xyz.xz-0123456789abcdef.pt"]  # e.g. an older layout
    for f in unrelated:
        f.write_text("keep")
    os.utime(src, (1, 1))  # the source changes: a new key
    qm9.load(src)
    names = sorted(f.name for f in folder.iterdir())
    assert not any(n.startswith(old_key) for n in names)
    assert f"{qm9.cache_key(src)}.pt" in names and f"{qm9.cache_key(other)}.pt" in names
    assert all(f.read_text() == "keep" for f in unrelated)
    assert len(names) == 4


def test_split_parts_are_in_id_order_whatever_the_file_order():
    ids = [f"dsgdb9nsd_{i:06d}" for i in range(1, 2001)]
    shuffled = list(np.random.default_rng(2).permutation(ids))
    for split in ("train", "valid", "test", "all"):
        got = [shuffled[i] for i in qm9.split_indices(shuffled, split)]
        assert got == [ids[i] for i in qm9.split_indices(ids, split)]  # so `limit` keeps the same molecules


# -- implausible geometry, unreadable files ------------------------------------------------------------
def test_an_atom_at_1e30_angstrom_is_refused_naming_its_line():
    """A coordinate beyond 10,000 Å is refused naming its line (kept, one such atom makes every loss of
    its batches Inf)."""
    lines = ["2", "x", "C 0.0 0.0 0.0", "H 1e30 0.0 0.0"]
    item, _ = parse_frame(lines, 0, "m")
    assert isinstance(item, Failure), item
    assert item.reason.startswith("line 4: coordinate 1e+30 Å is beyond 10000 Å"), item.reason


def test_atoms_on_one_point_are_refused():
    """A molecule with two atoms at one point is refused (zero distances: no bonds, NaN angles); the
    shortest real bond is kept."""
    lines = ["3", "x", "C 0 0 0", "H 0 0 0", "H 0 0 0"]
    item, _ = parse_frame(lines, 0, "m")
    assert isinstance(item, Failure) and "two atoms 0 Å apart" in item.reason, item
    ok, _ = parse_frame(["2", "x", "H 0 0 0", "H 0.74 0 0"], 0, "h2")  # the shortest real bond is kept
    assert isinstance(ok, Record)


def test_unreadable_xyz_is_a_permission_error_not_corruption(tmp_path, monkeypatch):
    """A file it may not read is a permission error with a fix, not "the file is truncated or corrupt".
    Root reads any file, so the open is denied the way it is for a user without read permission."""
    f = tmp_path / "mine.xyz"
    f.write_text("1\nx\nC 0 0 0\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(f))

    monkeypatch.setattr(qm9, "iter_records", denied)
    with pytest.raises(DataError) as exc:
        qm9.load(f, use_cache=False)
    assert exc.value.what == f"cannot read {f}: Permission denied"
    assert "truncated" not in exc.value.render() and "chmod" in exc.value.fix


def test_uncharacterised_molecules_are_dropped_and_counted(tmp_path, capsys):
    """The molecules QM9's authors list as uncharacterised are dropped from QM9 and counted, as EDM
    drops them; a user's own XYZ file keeps every record."""
    ids = qm9.uncharacterised_ids()
    assert len(ids) == 3054 and {"dsgdb9nsd_000058", "dsgdb9nsd_133866"} <= ids and "dsgdb9nsd_000001" not in ids
    files = {}
    for i in (1, 58, 61, 2):  # 58 and 61 are on the list
        syms, pos = embed("C")
        files[f"dsgdb9nsd_{i:06d}.xyz"] = extended_xyz(i, syms, pos)
    tar = tmp_path / qm9.QM9_TAR
    make_tar(tar, files)
    packed = qm9.load(tar, use_cache=False)
    assert packed.ids == ["dsgdb9nsd_000001", "dsgdb9nsd_000002"] and packed.excluded == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "dropped 2 molecules" in err and "uncharacterised" in err and "kept 2" in err
    own = tmp_path / "mine.xyz"  # a user's own XYZ file keeps every record
    own.write_text("".join(f"1\ndsgdb9nsd_{i:06d}\nC 0 0 0\n" for i in (1, 58)))
    assert len(qm9.load(own, use_cache=False)) == 2
