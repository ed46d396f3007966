"""QM9 on disk: find the files, download them, parse once, cache packed tensors, split.

Files are looked for under ``$FMKIT_DATA_DIR/qm9/`` (a data root that may be read-only):

- ``dsgdb9nsd.xyz.tar.bz2`` -- the original release (Ramakrishnan et al. 2014, 133,885 extended-XYZ
  files, H/C/N/O/F), downloaded by :func:`download` from figshare;
- ``qm9_hcno.xyz.xz`` / ``qm9_hcno.xyz`` -- one plain multi-frame XYZ file (e.g. the H/C/N/O subset
  of 128,744 molecules).

Parsed molecules are cached under ``$FMKIT_CACHE_DIR`` (default ``~/.cache/fmkit``) in
``qm9/<name>-<source>-<version>.pt``: ``<source>`` hashes the source file's path, ``<version>`` its
size and mtime plus the parser version. Writing a new version removes the older ones of that file.
The bond graph (``bonds: true``, :mod:`fmkit_molecules.perceive`) is a separate cache beside it,
``qm9/<name>-<source>-<version>-graph<G>.pt``, built on first use, so position-only runs never pay for it.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import re
import tarfile
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from fmkit.plugin import DataError, DependencyError

from fmkit_molecules.elements import ELEMENTS, INDEX
from fmkit_molecules.notes import note
from fmkit_molecules.xyz import Failure, Record, iter_frames, parse_frame

#: figshare file 3195389 of collection 978904 (doi:10.6084/m9.figshare.978904)
QM9_URL = "https://springernature.figshare.com/ndownloader/files/3195389"
QM9_TAR = "dsgdb9nsd.xyz.tar.bz2"
#: size and MD5 of the release as listed by api.figshare.com; not re-measured here (offline), but the
#: same pair is pinned by independent public downloaders of this file (docs/molecules.md)
QM9_TAR_SIZE = 86_144_227
QM9_TAR_MD5 = "ad1ebd51ee7f5b3a6e32e974e5d54012"
XYZ_NAMES = ("qm9_hcno.xyz.xz", "qm9_hcno.xyz", "qm9.xyz.xz", "qm9.xyz")

#: EDM split (Hoogeboom et al. 2022, from Anderson et al. 2019): 100,000 train, 10% test, rest valid of 130,831
EDM_TOTAL, EDM_TRAIN = 130_831, 100_000
SPLIT_SEED = 20_240_917
#: 2: a count that does not match the atom lines fails the frame; atomic numbers read as elements
PARSER_VERSION = 4  # 4: QM9's uncharacterised molecules are dropped  # 3: coordinates beyond 1e4 Å and atoms on one point are refused
#: version of the perceived graph cache (perceive.py's rules); a new one rebuilds the graph caches only
GRAPH_VERSION = 1
#: worker processes of the first graph perception (2: the cores of a small machine)
GRAPH_PROCESSES = 2
#: how many unreadable records a note names
SHOWN_FAILURES = 5


@dataclass
class Packed:
    """All molecules of a source, concatenated.

    ``pos`` [A, 3] float32 Angstrom (as in the file, not centred), ``atoms`` [A] int64 class indices,
    ``offsets`` [M + 1] int64 (molecule m is ``offsets[m]:offsets[m+1]``), ``ids`` M record ids;
    ``skipped`` counts the unreadable records, ``failures`` describes the first few.
    """

    ids: list[str]
    offsets: torch.Tensor
    atoms: torch.Tensor
    pos: torch.Tensor
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    excluded: int = 0  # molecules QM9's authors list as uncharacterised, dropped (see uncharacterised_ids)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]


@dataclass
class PackedGraph:
    """The bond graph and formal charges of every molecule of a :class:`Packed`, aligned with it.

    Molecule m's edges are ``edges[edge_offsets[m]:edge_offsets[m+1]]`` [E_m, 2] int16 local atom
    indices ``i < j`` (int16 keeps the QM9 cache at 16 MB), with kekulized orders ``orders[...]``
    int8 (1..3); ``charges`` [A] int8 formal charges per atom (aligned with ``Packed.atoms``);
    ``ok`` [M] bool: the molecule's graph could be assigned (else it has no edges and zero charges);
    ``method`` [M] int8: index into ``perceive.METHODS`` of the connectivity used (-1: none).
    """

    edge_offsets: torch.Tensor
    edges: torch.Tensor
    orders: torch.Tensor
    charges: torch.Tensor
    ok: torch.Tensor
    method: torch.Tensor

    def __len__(self) -> int:
        return len(self.ok)

    def bonds(self, m: int, n: int) -> torch.Tensor:
        """Molecule ``m``'s bond orders as a dense symmetric [n, n] long matrix (n = its atom count)."""
        a, b = int(self.edge_offsets[m]), int(self.edge_offsets[m + 1])
        e = self.edges[a:b].long()
        out = torch.zeros((n, n), dtype=torch.long)
        o = self.orders[a:b].long()
        out[e[:, 0], e[:, 1]] = o
        out[e[:, 1], e[:, 0]] = o
        return out


def data_dir(root: str | os.PathLike | None = None) -> Path:
    """The QM9 folder of the data root: ``root``, else ``$FMKIT_DATA_DIR``, else
    ``$FMKIT_CACHE_DIR/data`` (``~/.cache/fmkit/data``), where downloads go. It need not exist."""
    base = root if root is not None else (os.environ.get("FMKIT_DATA_DIR") or cache_dir() / "data")
    return Path(base).expanduser() / "qm9"


def cache_dir() -> Path:
    return Path(os.environ.get("FMKIT_CACHE_DIR") or Path.home() / ".cache" / "fmkit").expanduser()


def find_source(folder: Path, prefer: str = "auto") -> Path:
    """The file to read from ``folder``: the original tarball first, else a multi-frame XYZ."""
    tar = folder / QM9_TAR
    xyzs = [folder / n for n in XYZ_NAMES]
    if prefer == "tar":
        candidates = [tar]
    elif prefer == "xyz":
        candidates = xyzs
    else:
        candidates = [tar, *xyzs]
    for c in candidates:
        if c.is_file():
            if c == tar and c.stat().st_size != QM9_TAR_SIZE:
                raise DataError(
                    f"{c} has {c.stat().st_size:,} bytes, expected {QM9_TAR_SIZE:,} (partial download?)",
                    where=str(c),
                    fix=f"delete it and download again from {QM9_URL}",
                )
            return c
    have = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
    raise DataError(
        f"no QM9 data in {folder}" + (f" (it holds: {', '.join(have) or 'nothing'})" if have is not None else " (missing)"),
        where=str(folder),
        fix=f"download {QM9_TAR} from {QM9_URL} into {folder}/ (or set the dataset option `download: true`), "
        f"or place a multi-frame XYZ file named one of {', '.join(XYZ_NAMES)} there; to read another data "
        f"root, export FMKIT_DATA_DIR=/path/to/data (files under $FMKIT_DATA_DIR/qm9/)",
    )


def _unwritable(folder: Path, reason: str) -> DataError:
    """The error for a data root that cannot take the download (a file in the way, no permission)."""
    return DataError(
        f"cannot download QM9 into {folder}: {reason}",
        where=str(folder),
        fix=f"set FMKIT_DATA_DIR (or the dataset option `root`) to a writable folder; or put {QM9_TAR} "
        f"(from {QM9_URL}) or one of {', '.join(XYZ_NAMES)} into {folder}/ yourself and leave `download` off",
    )


def _check_writable(folder: Path) -> None:
    """Fail before downloading if ``folder`` could not be created or written (creates nothing)."""
    p = folder
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise _unwritable(folder, f"{p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise _unwritable(folder, f"{p} is not writable")


def _make_folder(folder: Path) -> None:
    """Create ``folder`` for the download; an OS error becomes a DataError naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(folder, f"{type(exc).__name__}: {exc.strerror or exc}") from None


def download(folder: Path, url: str = QM9_URL) -> Path:
    """Download the original QM9 tarball into ``folder`` (atomic; size and MD5 checked).

    ``folder`` is created only once the download has started.
    """
    dest = folder / QM9_TAR
    if dest.is_file() and dest.stat().st_size == QM9_TAR_SIZE:
        return dest
    _check_writable(folder)
    tmp = dest.with_suffix(dest.suffix + ".part")
    md5 = hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            _make_folder(folder)
            _fetch(resp, tmp, md5)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed: {exc}", where=str(dest),
                        fix=f"download it by hand into {folder}/ (it is {QM9_TAR_SIZE:,} bytes)") from exc
    size = tmp.stat().st_size
    if size != QM9_TAR_SIZE or md5.hexdigest() != QM9_TAR_MD5:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"downloaded file does not match: {size:,} bytes, md5 {md5.hexdigest()} "
            f"(expected {QM9_TAR_SIZE:,} bytes, md5 {QM9_TAR_MD5})",
            where=url, fix="try again later, or download it by hand and check it",
        )
    os.replace(tmp, dest)
    return dest


def _fetch(resp, tmp: Path, md5) -> None:
    """Stream an open download into ``tmp``, updating ``md5``, with a progress bar."""
    from tqdm import tqdm

    total = int(resp.headers.get("Content-Length") or QM9_TAR_SIZE)
    with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=f"download {QM9_TAR}") as bar:
        while chunk := resp.read(1 << 20):
            f.write(chunk)
            md5.update(chunk)
            bar.update(len(chunk))


# -- parsing -------------------------------------------------------------------------------------

def _progress(total: int | None, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="mol", mininterval=1.0, disable=os.environ.get("FMKIT_NO_PROGRESS") == "1")


def iter_records(path: Path) -> Iterator[Record | Failure]:
    """Every molecule (or parse failure) of a tarball of XYZ files or of a (.xz/.bz2) multi-frame XYZ."""
    name = path.name
    if name.endswith((".tar.bz2", ".tar", ".tar.gz", ".tar.xz")):
        with tarfile.open(path, mode="r:*") as tar:
            for member in tar:
                if not member.isfile() or not member.name.endswith(".xyz"):
                    continue
                stem = Path(member.name).stem
                fh = tar.extractfile(member)
                raw = fh.read() if fh is not None else b""
                lines = raw.decode("utf-8", errors="replace").splitlines()
                if not lines:
                    yield Failure(stem, "empty file")
                    continue
                item, _ = parse_frame(lines, 0, stem)  # one molecule per file; trailing lines ignored
                if isinstance(item, Record) and not item.id.startswith("dsgdb9nsd_"):
                    item = Record(stem, item.symbols, item.pos)
                yield item
        return
    opener = {".xz": lzma.open, ".bz2": bz2.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    yield from iter_frames(lines, name)


UNCHARACTERISED_FILE = "qm9_uncharacterized.txt"


def uncharacterised_ids() -> frozenset[str]:
    """The 3,054 QM9 records (``dsgdb9nsd_NNNNNN``) that failed the consistency check of Ramakrishnan
    et al. 2014 (figshare file 3195404, ``uncharacterized.txt``): their relaxed geometry no longer
    matches the molecule's SMILES. EDM's protocol drops them; the list ships with the plugin."""
    text = resources.files("fmkit_molecules").joinpath(UNCHARACTERISED_FILE).read_text()
    return frozenset(f"dsgdb9nsd_{int(ln):06d}" for ln in text.splitlines() if ln.strip() and ln[0] != "#")


def pack(items: Iterable[Record | Failure], source: str, total: int | None = None,
         exclude: frozenset[str] = frozenset()) -> Packed:
    """Parse-and-pack with a progress bar; failures are counted (see :func:`report_skipped`).

    Raises :class:`DataError` for an element outside the vocabulary (H, C, N, O, F).
    """
    ids: list[str] = []
    counts: list[int] = []
    atoms: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    failures: list[Failure] = []
    excluded = 0
    with _progress(total, f"parse {source}") as bar:
        for item in items:
            bar.update(1)
            if item.id in exclude:
                excluded += 1
                continue
            if isinstance(item, Failure):
                failures.append(item)
                continue
            try:
                z = np.fromiter((INDEX[s] for s in item.symbols), dtype=np.int64, count=len(item.symbols))
            except KeyError as exc:
                raise DataError(
                    f"record {item.id} has element {exc.args[0]!r}, outside the vocabulary {', '.join(ELEMENTS)}",
                    where=source, fix="remove such molecules from the file, or use a dataset with these elements",
                ) from None
            ids.append(item.id)
            counts.append(len(z))
            atoms.append(z)
            pos.append(item.pos)
    if not ids:
        raise DataError(f"no molecule could be read from {source} ({len(failures)} unreadable records)",
                        where=source, fix="check that the file is a QM9 tarball or a multi-frame XYZ file")
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Packed(
        ids=ids,
        offsets=torch.from_numpy(offsets),
        atoms=torch.from_numpy(np.concatenate(atoms)),
        pos=torch.from_numpy(np.concatenate(pos).astype(np.float32)),
        skipped=len(failures),
        failures=[f"{f.id}: {f.reason}" for f in failures[:SHOWN_FAILURES]],
        excluded=excluded,
    )


def report_skipped(packed: Packed, source: str) -> None:
    """Note the records of ``source`` that could not be read, and those dropped as uncharacterised;
    on every load, from the cache too."""
    if packed.excluded:
        note(f"dropped {packed.excluded:,} molecules of {source} that QM9's authors list as uncharacterised "
             f"(they failed the consistency check; EDM drops them too), kept {len(packed):,}", where=source,
             fix=f"nothing to do: the list is fmkit_molecules/{UNCHARACTERISED_FILE} (figshare file 3195404)")
    if not packed.skipped:
        return
    first = f"the first {len(packed.failures)}: " if packed.skipped > len(packed.failures) else ""
    note(f"skipped {packed.skipped} unreadable record(s) of {source} and kept {len(packed)} molecule(s); "
         f"{first}{'; '.join(packed.failures)}",
         where=source,
         fix="nothing to do if losing them is fine; to keep them, repair those records (a count line, a comment "
         "line, then one 'El x y z' line per atom, as many as the count says) or get an intact copy of the file")


def _key_parts(path: Path) -> tuple[str, str]:
    """(``<name>-<hash of the path>``, ``<hash of size, mtime, parser version, vocabulary>``) of a source file."""
    st = path.stat()
    src = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    ver = hashlib.sha256(f"{st.st_size}|{st.st_mtime_ns}|v{PARSER_VERSION}|{','.join(ELEMENTS)}".encode()).hexdigest()
    return f"{path.name}-{src}", ver[:16]


def cache_key(path: Path) -> str:
    """The name of ``path``'s caches: the same file changed (size, mtime) or a new parser gives a new key."""
    return "-".join(_key_parts(path))


def smiles_cache_name(path: Path, split: str, limit: int | None = None) -> str:
    """The name of the SMILES cache of a split (its first ``limit`` molecules) of ``path``."""
    return f"{cache_key(path)}-{split}" + (f"-first{limit}" if limit is not None else "")


def remove_stale_caches(path: Path) -> list[Path]:
    """Delete this plugin's caches (``.pt`` molecules, ``-graph<G>.pt`` graphs, ``.smi`` SMILES) of ``path``
    under an older key, and its graph caches of an older :data:`GRAPH_VERSION`.

    Only files named like the caches of this very source file (same path hash) are touched: a
    changed mtime, size or parser version would otherwise leave a ~50 MB file behind each time.
    """
    prefix, ver = _key_parts(path)
    own = re.compile(re.escape(prefix)
                     + r"-([0-9a-f]{16})(?:\.pt|-graph(\d+)\.pt|-(?:train|valid|test|all)(?:-first\d+)?\.smi)")
    removed = []
    folder = cache_dir() / "qm9"
    for f in folder.iterdir() if folder.is_dir() else ():
        m = own.fullmatch(f.name)
        if m and (m.group(1) != ver or (m.group(2) is not None and int(m.group(2)) != GRAPH_VERSION)) and f.is_file():
            try:
                f.unlink()
                removed.append(f)
            except OSError:
                pass  # another process removed it, or the cache is read-only: harmless
    return removed


def _read_cache(cfile: Path) -> Packed | None:
    """The packed molecules of a cache file; None (with a note) when it cannot be used."""
    try:
        d = torch.load(cfile, weights_only=True)
        return Packed(ids=list(d["ids"]), offsets=d["offsets"], atoms=d["atoms"], pos=d["pos"],
                      skipped=int(d["skipped"]), failures=list(d.get("failures", [])),
                      excluded=int(d.get("excluded", 0)))
    except Exception as exc:  # a corrupt cache is rebuilt, not trusted
        note(f"ignoring an unreadable cache ({type(exc).__name__}: {exc}); parsing the source again", where=str(cfile),
             fix="nothing to do: it is rewritten (delete it if this repeats)")
        return None


def _write_cache(cfile: Path, packed: Packed, path: Path) -> None:
    """Write the cache atomically, then remove the older caches of the same source file."""
    try:
        cfile.parent.mkdir(parents=True, exist_ok=True)
        tmp = cfile.with_suffix(f".tmp{os.getpid()}")
        torch.save({"ids": packed.ids, "offsets": packed.offsets, "atoms": packed.atoms, "pos": packed.pos,
                    "skipped": packed.skipped, "failures": packed.failures,
                    "excluded": packed.excluded}, tmp)
        os.replace(tmp, cfile)
    except OSError as exc:
        note(f"could not write the parse cache ({exc}); the next run parses the source again", where=str(cfile),
             fix="set FMKIT_CACHE_DIR to a writable folder with ~50 MB free")
        return
    remove_stale_caches(path)


def _unreadable_fix(path: Path) -> str:
    """How to replace a truncated/corrupt source: only the tarball can be downloaded again, and only a
    file the `qm9` dataset looks for has it as an alternative (``xyz_molecules`` reads any XYZ file)."""
    if path.name == QM9_TAR:
        return (f"delete it and download it again: fetch {QM9_URL} ({QM9_TAR_SIZE:,} bytes) by hand, or let the "
                f"`qm9` dataset fetch it (its option `download: true`)")
    again = f"copy {path.name} again from where it came from (fmkit cannot download it)"
    if path.name not in XYZ_NAMES:
        return again
    return (f"{again}, or delete it and use the original release {QM9_TAR} instead (the `qm9` dataset option "
            f"`download: true` fetches it from {QM9_URL})")


def load(path: Path, *, use_cache: bool = True) -> Packed:
    """Packed molecules of ``path``, parsed once and then read from the cache; unreadable records
    are reported on every load."""
    cfile = cache_dir() / "qm9" / f"{cache_key(path)}.pt" if use_cache else None
    packed = _read_cache(cfile) if cfile is not None and cfile.is_file() else None
    if packed is None:
        total = 133_885 if path.name == QM9_TAR else None
        try:
            # QM9's own files: EDM's protocol without the uncharacterised molecules
            exclude = uncharacterised_ids() if path.name == QM9_TAR or path.name in XYZ_NAMES else frozenset()
            packed = pack(iter_records(path), str(path), total=total, exclude=exclude)
        except PermissionError as exc:
            raise DataError(f"cannot read {path}: {exc.strerror or 'permission denied'}", where=str(path),
                            fix="give this user read permission on the file (chmod u+r FILE), or copy it somewhere "
                                "readable") from None
        except (EOFError, lzma.LZMAError, OSError, tarfile.TarError) as exc:  # truncated/corrupt archive
            raise DataError(f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}: {exc})",
                            where=str(path), fix=_unreadable_fix(path)) from None
        if cfile is not None:
            _write_cache(cfile, packed, path)
    report_skipped(packed, str(path))
    return packed


# -- the bond graph ------------------------------------------------------------------------------

def graph_cache_file(path: Path) -> Path:
    """Where the perceived graph of source ``path`` is cached: the packed cache's name plus ``-graph<G>``."""
    return cache_dir() / "qm9" / f"{cache_key(path)}-graph{GRAPH_VERSION}.pt"


def perceive_graph(packed: Packed, source: str, processes: int = GRAPH_PROCESSES) -> PackedGraph:
    """Bonds and charges of every molecule of ``packed`` from its geometry (RDKit; see
    :mod:`fmkit_molecules.perceive`), with a progress bar; ``processes`` worker processes."""
    try:
        from fmkit_molecules import perceive
    except ImportError as exc:
        raise DependencyError(f"RDKit is needed to derive bonds and charges from the geometry and does not "
                              f"import here ({exc})", where=f"dataset option bonds: true ({source})",
                              fix="pip install rdkit (a dependency of fmkit-molecules), or build the graph cache "
                                  "once on a machine with RDKit and copy $FMKIT_CACHE_DIR/qm9/*-graph*.pt") from exc
    with _progress(len(packed), f"bonds+charges {Path(source).name}") as bar:
        got = perceive.perceive_packed(packed.atoms.numpy(), packed.pos.numpy(), packed.offsets.numpy(),
                                       processes=processes, progress=bar.update)
    offsets = np.zeros(len(got.edge_counts) + 1, dtype=np.int64)
    np.cumsum(got.edge_counts, out=offsets[1:])
    return PackedGraph(edge_offsets=torch.from_numpy(offsets), edges=torch.from_numpy(got.edges),
                       orders=torch.from_numpy(got.orders), charges=torch.from_numpy(got.charges),
                       ok=torch.from_numpy(got.ok), method=torch.from_numpy(got.method))


_GRAPH_KEYS = ("edge_offsets", "edges", "orders", "charges", "ok", "method")


def _read_graph_cache(cfile: Path, packed: Packed) -> PackedGraph | None:
    """The cached graph if it is readable and matches ``packed`` (molecule and atom counts); else None
    (with a note for an unreadable or mismatched file, which is then rebuilt)."""
    try:
        d = torch.load(cfile, weights_only=True)
        graph = PackedGraph(**{k: d[k] for k in _GRAPH_KEYS})
        same = (int(d["molecules"]) == len(packed) and int(d["atoms"]) == len(packed.atoms)
                and len(graph.ok) == len(packed) and len(graph.charges) == len(packed.atoms)
                and len(graph.edge_offsets) == len(packed) + 1 and int(graph.edge_offsets[-1]) == len(graph.edges))
        if not same:
            raise ValueError(f"it holds {int(d['molecules'])} molecules / {int(d['atoms'])} atoms, the source "
                             f"{len(packed)} / {len(packed.atoms)}")
        return graph
    except Exception as exc:  # a corrupt or foreign cache is rebuilt, not trusted
        note(f"ignoring an unusable graph cache ({type(exc).__name__}: {exc}); deriving the bonds again",
             where=str(cfile), fix="nothing to do: it is rewritten (delete it if this repeats)")
        return None


def _write_graph_cache(cfile: Path, graph: PackedGraph, packed: Packed, path: Path) -> None:
    """Write the graph cache atomically (temp file, rename), then remove stale caches of ``path``."""
    try:
        cfile.parent.mkdir(parents=True, exist_ok=True)
        tmp = cfile.with_suffix(f".tmp{os.getpid()}")
        torch.save({**{k: getattr(graph, k) for k in _GRAPH_KEYS}, "molecules": len(packed),
                    "atoms": len(packed.atoms), "graph_version": GRAPH_VERSION}, tmp)
        os.replace(tmp, cfile)
    except OSError as exc:
        note(f"could not write the graph cache ({exc}); the next run derives the bonds again", where=str(cfile),
             fix="set FMKIT_CACHE_DIR to a writable folder with ~20 MB free")
        return
    remove_stale_caches(path)


def load_graph(path: Path | None, packed: Packed, *, use_cache: bool = True,
               processes: int = GRAPH_PROCESSES) -> PackedGraph:
    """The bond graph of ``packed`` (the molecules :func:`load` read from ``path``): from its cache when
    ``use_cache``, else perceived (in parallel, with a progress bar) and then cached. ``path`` None
    (in-memory records) never caches."""
    cfile = graph_cache_file(path) if use_cache and path is not None else None
    graph = _read_graph_cache(cfile, packed) if cfile is not None and cfile.is_file() else None
    if graph is None:
        graph = perceive_graph(packed, str(path) if path is not None else "records", processes=processes)
        if cfile is not None:
            _write_graph_cache(cfile, graph, packed, path)  # type: ignore[arg-type]
    return graph


# -- split ---------------------------------------------------------------------------------------

def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, valid, test) in EDM proportions: train 100,000/130,831 of ``n``, test 10%, valid the rest."""
    n_train = int(round(n * EDM_TRAIN / EDM_TOTAL))
    n_test = int(0.1 * n)
    return n_train, n - n_train - n_test, n_test


def split_indices(ids: list[str], split: str, seed: int = SPLIT_SEED) -> np.ndarray:
    """Indices (into ``ids``) of ``split`` in id order: a fixed permutation of the molecules sorted by
    id, cut in EDM proportions -- the same files give the same split on every machine, and with QM9
    ids whatever the order of the records (fallback ids ``file#frameK`` follow the file's order)."""
    if split not in ("train", "valid", "test", "all"):
        raise ValueError(f"unknown split {split!r}")
    order = np.argsort(np.asarray(ids), kind="stable")
    if split == "all":
        return order
    ranks = np.random.default_rng(seed).permutation(len(ids))
    n_train, n_valid, _ = split_sizes(len(ids))
    part = {"train": ranks[:n_train], "valid": ranks[n_train : n_train + n_valid], "test": ranks[n_train + n_valid :]}
    return order[np.sort(part[split])]


def file_digest(path: Path, algo: str = "md5") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["Packed", "PackedGraph", "load_graph", "perceive_graph", "graph_cache_file", "GRAPH_VERSION",
           "data_dir", "find_source", "download", "iter_records", "pack", "report_skipped", "load",
           "split_indices", "split_sizes", "cache_dir", "cache_key", "smiles_cache_name", "remove_stale_caches",
           "QM9_URL", "QM9_TAR"]
