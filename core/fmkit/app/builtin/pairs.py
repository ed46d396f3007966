"""Stored (x0, x1) pairs: the on-disk format that reflow writes and the dataset that serves it.

A pairs folder holds safetensors shards ``shard-00000.safetensors`` ... and a JSON manifest
``pairs.json``. Shard k holds pairs ``[k * shard_size, (k + 1) * shard_size)``; inside a shard the
tensors are named ``x0.<field>`` (the source sample), ``x1.<field>`` (where the teacher's ODE took
it), ``mask`` and ``cond`` (or ``cond.<key>`` for a mapping of conditions), batch first. The
manifest records the teacher (run, checkpoint, step, which weights), the solver, the seed, the
data description (:class:`fmkit.flow.data.DataInfo`) and each finished shard with its sha256; a shard
is written to a temporary file and renamed into place before the manifest names it, so a killed
writer leaves only whole shards behind.

:class:`PairsDataset` serves the pairs as ordinary examples (x1's fields, mask, cond) that carry
their stored source sample under the reserved key ``"x0"``; the ``given`` coupling trains on it
(k-rectified flow and distillation, Liu et al. 2022, "Flow Straight and Fast").
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from fmkit.engine.files import _sha256, save_tensors, write_atomic_text
from fmkit.errors import DataError
from fmkit.flow.data import DataInfo, Dataset, FieldInfo, Indices
from fmkit.flow.state import COND, MASK, X0, State, fields

MANIFEST = "pairs.json"
FORMAT = "fmkit-pairs"
VERSION = 1


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


# -- DataInfo <-> JSON --------------------------------------------------------------------------
def info_to_json(info: DataInfo) -> dict[str, Any]:
    """The dataset description as JSON (``meta`` keeps only its JSON-able entries)."""
    meta = {}
    for k, v in info.meta.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        meta[k] = v
    return {"fields": {k: {"shape": list(f.shape), "num_classes": f.num_classes} for k, f in info.fields.items()},
            "num_cond_classes": info.num_cond_classes, "has_mask": info.has_mask, "meta": meta}


def info_from_json(d: Mapping[str, Any]) -> DataInfo:
    return DataInfo({k: FieldInfo(tuple(f["shape"]), f.get("num_classes")) for k, f in d["fields"].items()},
                    num_cond_classes=d.get("num_cond_classes"), has_mask=bool(d.get("has_mask")),
                    meta=dict(d.get("meta") or {}))


# -- shards -------------------------------------------------------------------------------------
def pack(x0: State, x1: State) -> dict[str, Tensor]:
    """One shard's tensors from a batch of pairs (``x1`` carries mask and cond)."""
    out = {f"x0.{k}": v for k, v in fields(x0).items()}
    out.update({f"x1.{k}": v for k, v in fields(x1).items()})
    if MASK in x1:
        out[MASK] = x1[MASK]
    cond = x1.get(COND)
    if isinstance(cond, Tensor):
        out[COND] = cond
    elif isinstance(cond, Mapping):
        out.update({f"{COND}.{k}": v for k, v in cond.items()})
    return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def unpack(tensors: Mapping[str, Tensor]) -> tuple[State, State]:
    """Inverse of :func:`pack`: ``(x0 fields, x1 state with mask and cond)``."""
    x0: State = {}
    x1: State = {}
    cond: dict[str, Tensor] = {}
    for k, v in tensors.items():
        if k.startswith("x0."):
            x0[k[3:]] = v
        elif k.startswith("x1."):
            x1[k[3:]] = v
        elif k == MASK or k == COND:
            x1[k] = v
        elif k.startswith(f"{COND}."):
            cond[k[len(COND) + 1:]] = v
    if cond:
        x1[COND] = cond  # type: ignore[assignment]
    return x0, x1


def write_shard(folder: Path, k: int, x0: State, x1: State) -> dict[str, Any]:
    """Shard ``k`` written atomically (temporary file, fsync, rename); returns its manifest entry."""
    final = Path(folder) / shard_name(k)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    tensors = pack(x0, x1)
    save_tensors(tensors, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    n = next(iter(tensors.values())).shape[0]
    return {"file": final.name, "count": int(n), "sha256": _sha256(final)}


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        what = "does not exist" if not Path(folder).exists() else f"holds no {MANIFEST}"
        raise DataError(f"pairs folder {folder} {what}", where=str(folder),
                        fix="write pairs with `fmkit reflow RUN --pairs N --out PAIRS` and point data.path at PAIRS")
    try:
        man = json.loads(path.read_text())
        if not isinstance(man, dict) or man.get("format") != FORMAT:
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{path} is not an fmkit pairs manifest", where=str(path),
                        fix="write the pairs again with `fmkit reflow` (into an empty --out)") from None
    if man.get("version") != VERSION:
        raise DataError(f"pairs format version {man.get('version')!r} is not supported (expected {VERSION})",
                        where=str(path), fix="write the pairs again with this fmkit's `fmkit reflow`")
    return man


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    write_atomic_text(Path(folder) / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _pad_dim1(v: Tensor, n: int) -> Tensor:
    if v.dim() < 2 or v.shape[1] == n:
        return v
    return torch.nn.functional.pad(v, [0, 0] * (v.dim() - 2) + [0, n - v.shape[1]])


def _concat(parts: list[State], variable: set[str]) -> State:
    """Concatenate shard states; fields of variable size (dim 1, and the mask) padded to the largest."""
    out: State = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        if isinstance(vals[0], Mapping):
            out[k] = {kk: torch.cat([v[kk] for v in vals]) for kk in vals[0]}  # type: ignore[assignment]
            continue
        if (k in variable or k == MASK) and len({v.shape[1] for v in vals}) > 1:
            n = max(v.shape[1] for v in vals)
            vals = [_pad_dim1(v, n) for v in vals]
        out[k] = torch.cat(vals)
    return out


def load_pairs(folder: str | Path, verify: bool = True, allow_partial: bool = False) -> tuple[State, State, dict]:
    """All stored pairs of ``folder``: ``(x0, x1, manifest)``, shards in order, each checked against
    its recorded sha256 (``verify``). An unfinished reflow is refused unless ``allow_partial``."""
    folder = Path(folder)
    man = read_manifest(folder)
    if not man.get("complete") and not allow_partial:
        done = sum(s["count"] for s in man.get("shards", []))
        raise DataError(f"the pairs in {folder} are unfinished ({done} of {man.get('num_pairs')} written)",
                        where=str(folder), fix="finish them: run the same `fmkit reflow` command again (it resumes)")
    shards = man.get("shards", [])
    if not shards:
        raise DataError(f"{folder} holds no pairs yet", where=str(folder), fix="run `fmkit reflow` to write them")
    x0s, x1s = [], []
    for entry in shards:
        p = folder / entry["file"]
        if "/" in entry["file"] or entry["file"].startswith("."):
            raise DataError(f"the pairs manifest names an unsafe file {entry['file']!r}", where=str(folder / MANIFEST))
        if not p.is_file():
            raise DataError(f"pairs shard {entry['file']} is missing", where=str(folder),
                            fix="write the pairs again with `fmkit reflow` into an empty folder")
        if verify and _sha256(p) != entry["sha256"]:
            raise DataError(f"pairs shard {entry['file']} is corrupt (checksum mismatch)", where=str(p),
                            fix="delete it and its entry will be rewritten: run the same `fmkit reflow` again")
        try:
            x0, x1 = unpack(load_file(str(p)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise DataError(f"pairs shard {entry['file']} is not a valid safetensors file: {exc}", where=str(p),
                            fix="write the pairs again with `fmkit reflow`") from None
        x0s.append(x0)
        x1s.append(x1)
    info = man["data_info"]["fields"]
    variable = {k for k, f in info.items() if any(s is None for s in f["shape"])}
    x0 = _concat(x0s, variable)
    x1 = _concat(x1s, variable)
    return x0, x1, man  # padding that the concatenation adds is zero, as a source sample's padding is


class PairsDataset(Dataset):
    """Stored reflow pairs as a dataset: example i is x1_i's fields with its mask and cond, and its
    source sample under ``"x0"`` (a state of the same fields), which the ``given`` coupling keeps.

    ``info`` is the teacher data's description (from the manifest), so a model built for the
    teacher's data fits this dataset too (``trainer.init_from``). ``reference`` and ``template``
    serve x1 without x0: metrics then compare samples with the teacher's samples, unless
    ``reference_data`` is set (recipes: ``data.reference: teacher``), whose reference they use.
    """

    def __init__(self, path: str | Path, limit: int | None = None, verify: bool = True) -> None:
        x0, x1, man = load_pairs(path, verify=verify)
        n = next(iter(fields(x1).values())).shape[0]
        if limit is not None:
            if limit < 1:
                raise DataError(f"pairs limit must be >= 1, got {limit}", where="data.limit")
            idx = slice(0, min(limit, n))
            x0 = {k: v[idx] for k, v in x0.items()}
            x1 = {k: ({kk: vv[idx] for kk, vv in v.items()} if isinstance(v, Mapping) else v[idx])
                  for k, v in x1.items()}
            n = min(limit, n)
        if set(x0) != set(fields(x1)):
            raise DataError(f"the pairs in {path} have x0 fields {sorted(x0)} but x1 fields {sorted(fields(x1))}",
                            where=str(path), fix="write the pairs again with `fmkit reflow`")
        self.path, self.manifest, self._n = Path(path), man, n
        self.x0, self.x1 = x0, x1
        self.info = info_from_json(man["data_info"])
        self.reference_data: Dataset | None = None  # metrics' reference: the teacher's data when set

    def __len__(self) -> int:
        return self._n

    def _rows(self, i: Tensor | int, with_x0: bool = True) -> State:
        out: State = {}
        for k, v in self.x1.items():
            out[k] = {kk: vv[i] for kk, vv in v.items()} if isinstance(v, Mapping) else v[i]  # type: ignore
        if with_x0:
            out[X0] = {k: v[i] for k, v in self.x0.items()}  # type: ignore[assignment]
        return out

    def __getitem__(self, i: int) -> State:
        return self._rows(i)

    def collate(self, items: Sequence[State]) -> State:
        out: State = {}
        for k, v in items[0].items():
            if isinstance(v, Mapping):
                out[k] = {kk: torch.stack([it[k][kk] for it in items]) for kk in v}  # type: ignore[index]
            else:
                out[k] = torch.stack([it[k] for it in items])
        return out

    def get_batch(self, idx: Indices) -> State:
        """One gather per tensor."""
        return self._rows(torch.from_numpy(np.asarray(idx, dtype=np.int64)))

    def reference(self, n: int, seed: int = 0) -> State:
        if self.reference_data is not None:
            return self.reference_data.reference(n, seed)
        n = min(n, len(self))
        g = torch.Generator().manual_seed(seed)
        return self._rows(torch.randperm(len(self), generator=g)[:n], with_x0=False)

    def template(self, n: int, seed: int = 0) -> State:
        g = torch.Generator().manual_seed(seed)
        return self._rows(torch.randint(0, len(self), (n,), generator=g), with_x0=False)


def save_pairs(out: str | Path, x0: State, x1: State, info: DataInfo, *, shard_size: int = 4096,
               teacher: Mapping[str, Any] | None = None, note: str | None = None) -> Path:
    """Store pairs made elsewhere (``x0`` fields; ``x1`` with its mask and cond, batch first) as a
    pairs folder that :class:`PairsDataset` serves: e.g. a known map, or another library's samples.
    Refuses a folder that holds anything already.

    Args:
        out: the pairs folder to write (new or empty; made with its parents).
        x0: the starting points, one tensor [N, ...] per field (a mask or cond in it is not stored).
        x1: their end points, the same fields [N, ...], with ``mask`` and ``cond`` when the data has them.
        info: the data's description, stored so that the folder serves as a dataset of that data.
        shard_size: pairs per safetensors shard.
        teacher: what made the pairs (JSON-able), kept in the manifest; None: nothing recorded.
        note: how they were made, the manifest's solver entry; None: "given".

    Returns:
        ``out`` as a Path, holding a complete manifest and its shards.
    """
    from fmkit.errors import OutputError

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise OutputError(f"{out} is not empty", where=str(out), fix="save pairs into a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    n = next(iter(fields(x1).values())).shape[0]
    man: dict[str, Any] = {"format": FORMAT, "version": VERSION, "num_pairs": int(n), "shard_size": int(shard_size),
                           "seed": None, "teacher": dict(teacher or {}), "solver": {"about": note or "given"},
                           "data_info": info_to_json(info), "complete": False, "shards": []}
    for k, start in enumerate(range(0, n, shard_size)):
        sl = slice(start, min(start + shard_size, n))
        part1 = {kk: ({a: b[sl] for a, b in v.items()} if isinstance(v, Mapping) else v[sl]) for kk, v in x1.items()}
        entry = write_shard(out, k, {kk: v[sl] for kk, v in fields(x0).items()}, part1)
        entry["start"] = start
        man["shards"].append(entry)
    man["complete"] = True
    write_manifest(out, man)
    return out
