"""QM9 on disk: find the files, download them, parse once, cache packed tensors, split.

Files are looked for under ``$FMKIT_DATA_DIR/qm9/`` (a data root that may be read-only):

- ``dsgdb9nsd.xyz.tar.bz2`` -- the original release (Ramakrishnan et al. 2014, 133,885 extended-XYZ
  files, H/C/N/O/F), downloaded by :func:`download` from figshare;
- ``qm9_hcno.xyz.xz`` / ``qm9_hcno.xyz`` -- one plain multi-frame XYZ file (e.g. the H/C/N/O subset
  of 128,744 molecules).

Parsed molecules are cached under ``$FMKIT_CACHE_DIR`` (default ``~/.cache/fmkit``) in
``qm9/<key>.pt``, the key hashing the source file's path, size and mtime plus the parser version.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import tarfile
import urllib.request
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmkit.errors import DataError
from fmkit_molecules.elements import ELEMENTS, INDEX
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
PARSER_VERSION = 1


@dataclass
class Packed:
    """All molecules of a source, concatenated.

    ``pos`` [A, 3] float32 Angstrom (as in the file, not centred), ``atoms`` [A] int64 class indices,
    ``offsets`` [M + 1] int64 (molecule m is ``offsets[m]:offsets[m+1]``), ``ids`` M record ids.
    """

    ids: list[str]
    offsets: torch.Tensor
    atoms: torch.Tensor
    pos: torch.Tensor
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]


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


def download(folder: Path, url: str = QM9_URL) -> Path:
    """Download the original QM9 tarball into ``folder`` (atomic; size and MD5 checked)."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / QM9_TAR
    if dest.is_file() and dest.stat().st_size == QM9_TAR_SIZE:
        return dest
    tmp = dest.with_suffix(dest.suffix + ".part")
    md5 = hashlib.md5()
    try:
        from tqdm import tqdm

        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
            total = int(resp.headers.get("Content-Length") or QM9_TAR_SIZE)
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {QM9_TAR}") as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
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


def pack(items: Iterable[Record | Failure], source: str, total: int | None = None) -> Packed:
    """Parse-and-pack with a progress bar; failures are counted and reported in one warning.

    Raises :class:`DataError` for an element outside the vocabulary (H, C, N, O, F).
    """
    ids: list[str] = []
    counts: list[int] = []
    atoms: list[np.ndarray] = []
    pos: list[np.ndarray] = []
    failures: list[Failure] = []
    with _progress(total, f"parse {source}") as bar:
        for item in items:
            bar.update(1)
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
    if failures:
        shown = "; ".join(f"{f.id}: {f.reason}" for f in failures[:5])
        warnings.warn(f"qm9: skipped {len(failures)} unreadable record(s) in {source} (first: {shown})", stacklevel=2)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Packed(
        ids=ids,
        offsets=torch.from_numpy(offsets),
        atoms=torch.from_numpy(np.concatenate(atoms)),
        pos=torch.from_numpy(np.concatenate(pos).astype(np.float32)),
        skipped=len(failures),
    )


def cache_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{PARSER_VERSION}|{','.join(ELEMENTS)}".encode())
    return f"{path.name}-{h.hexdigest()[:16]}"


def load(path: Path, *, use_cache: bool = True) -> Packed:
    """Packed molecules of ``path``, parsed once and then read from the cache."""
    cfile = cache_dir() / "qm9" / f"{cache_key(path)}.pt"
    if use_cache and cfile.is_file():
        try:
            d = torch.load(cfile, weights_only=True)
            return Packed(ids=list(d["ids"]), offsets=d["offsets"], atoms=d["atoms"], pos=d["pos"], skipped=int(d["skipped"]))
        except Exception as exc:  # a corrupt cache is rebuilt, not trusted
            warnings.warn(f"qm9: ignoring unreadable cache {cfile}: {exc}", stacklevel=2)
    total = 133_885 if path.name == QM9_TAR else None
    try:
        packed = pack(iter_records(path), str(path), total=total)
    except (EOFError, lzma.LZMAError, OSError, tarfile.TarError) as exc:  # truncated/corrupt archive
        raise DataError(f"cannot read {path}: the file is truncated or corrupt ({type(exc).__name__}: {exc})",
                        where=str(path), fix=f"delete it and download it again ({QM9_URL}), or copy it again") from None
    if use_cache:
        try:
            cfile.parent.mkdir(parents=True, exist_ok=True)
            tmp = cfile.with_suffix(f".tmp{os.getpid()}")
            torch.save({"ids": packed.ids, "offsets": packed.offsets, "atoms": packed.atoms, "pos": packed.pos,
                        "skipped": packed.skipped}, tmp)
            os.replace(tmp, cfile)
        except OSError as exc:
            warnings.warn(f"qm9: could not write the cache {cfile}: {exc}", stacklevel=2)
    return packed


# -- split ---------------------------------------------------------------------------------------

def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, valid, test) in EDM proportions: train 100,000/130,831 of ``n``, test 10%, valid the rest."""
    n_train = int(round(n * EDM_TRAIN / EDM_TOTAL))
    n_test = int(0.1 * n)
    return n_train, n - n_train - n_test, n_test


def split_indices(ids: list[str], split: str, seed: int = SPLIT_SEED) -> np.ndarray:
    """Indices (into ``ids``) of ``split``: a fixed permutation of the molecules sorted by id, cut in
    EDM proportions -- the same files give the same split on every machine."""
    if split not in ("train", "valid", "test", "all"):
        raise ValueError(f"unknown split {split!r}")
    order = np.argsort(np.asarray(ids), kind="stable")
    if split == "all":
        return order
    perm = order[np.random.default_rng(seed).permutation(len(ids))]
    n_train, n_valid, _ = split_sizes(len(ids))
    if split == "train":
        return np.sort(perm[:n_train])
    if split == "valid":
        return np.sort(perm[n_train : n_train + n_valid])
    return np.sort(perm[n_train + n_valid :])


def file_digest(path: Path, algo: str = "md5") -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


__all__ = ["Packed", "data_dir", "find_source", "download", "iter_records", "pack", "load", "split_indices",
           "split_sizes", "cache_dir", "QM9_URL", "QM9_TAR"]
