"""Crash-safe checkpoints that load without executing code.

A checkpoint is a directory ``checkpoints/step_NNNNNNN/`` of safetensors files (weights, EMA,
optimizer tensors, RNG states) and JSON (step, data position, optimizer hyper-parameters, recipe
fingerprint), plus ``MANIFEST.json`` with the sha256 of every file. It is written into a temporary
directory, each file fsynced, then renamed into place; ``checkpoints/latest`` is replaced
atomically afterwards, and older checkpoints are pruned only once the new one is complete. Nothing
is ever unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from fmkit.errors import CheckpointError

MANIFEST = "MANIFEST.json"
LATEST = "latest"
FORMAT_VERSION = 1


@dataclass
class CheckpointData:
    """Everything a checkpoint holds, as tensors and JSON-able values."""

    tensors: dict[str, dict[str, Tensor]]  # group name -> safetensors dict (model, ema, optim, rng)
    meta: dict[str, Any] = field(default_factory=dict)  # step, data position, fingerprint, ...


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temp file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_bytes(tmp, text.encode("utf-8"))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_tensors(tensors: Mapping[str, Tensor], path: Path) -> None:
    """``safetensors`` file at ``path``, readable as any other file the process writes (safetensors
    creates it 0600, so a team's shared run directory held weights only their owner could read)."""
    save_file(dict(tensors), str(path))
    os.chmod(path, 0o666 & ~_UMASK)


def _read_umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: once, at import, not while threads write files
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def save_checkpoint(ckpt_root: Path, step: int, data: CheckpointData, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``ckpt_root`` atomically; keep the newest ``keep``."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files: dict[str, str] = {}
    for group, tensors in data.tensors.items():
        fn = tmp / f"{group}.safetensors"
        clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        save_tensors(clean, fn)
        with open(fn, "rb+") as f:
            os.fsync(f.fileno())
        files[fn.name] = _sha256(fn)
    meta_fn = tmp / "meta.json"
    _write_bytes(meta_fn, json.dumps(data.meta, indent=1, sort_keys=True).encode())
    files[meta_fn.name] = _sha256(meta_fn)
    manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
    _write_bytes(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    _fsync_dir(tmp)
    if final.exists():  # a re-save of the same step (e.g. an interrupt right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    write_atomic_text(ckpt_root / LATEST, final.name + "\n")
    _prune(ckpt_root, keep)
    return final


def _prune(ckpt_root: Path, keep: int) -> None:
    done = sorted(p for p in ckpt_root.glob("step_*") if (p / MANIFEST).exists())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def verify(ckpt: Path) -> None:
    """Raise :class:`CheckpointError` unless every file matches its manifest checksum."""
    ckpt = Path(ckpt)
    man_path = ckpt / MANIFEST
    if not man_path.is_file():
        raise CheckpointError(f"{ckpt} is not a complete fmkit checkpoint (no {MANIFEST})", where=str(ckpt),
                              fix="point at a checkpoints/step_* directory written by fmkit, or at a run directory")
    try:
        manifest = json.loads(man_path.read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{man_path} is corrupt", where=str(man_path),
                              fix="use an earlier checkpoint of the run") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {manifest.get('format')!r} is not supported (expected "
                              f"{FORMAT_VERSION})", where=str(ckpt), fix="use the fmkit version that wrote it")
    for name, digest in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise CheckpointError(f"manifest names an unsafe file {name!r}", where=str(man_path))
        p = ckpt / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {name} is missing", where=str(ckpt),
                                  fix="the checkpoint is incomplete; use an earlier one")
        if _sha256(p) != digest:
            raise CheckpointError(f"checkpoint file {name} is corrupt or truncated (checksum mismatch)",
                                  where=str(p), fix="use an earlier checkpoint of the run (see checkpoints/)")


def load_checkpoint(ckpt: Path) -> CheckpointData:
    """Verify checksums and read a checkpoint directory (safetensors + JSON only)."""
    ckpt = Path(ckpt)
    verify(ckpt)
    manifest = json.loads((ckpt / MANIFEST).read_text())
    tensors: dict[str, dict[str, Tensor]] = {}
    meta: dict[str, Any] = {}
    for name in manifest["files"]:
        p = ckpt / name
        if name.endswith(".safetensors"):
            try:
                tensors[name[: -len(".safetensors")]] = load_file(str(p))
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(f"checkpoint file {name} is not a valid safetensors file: {exc}",
                                      where=str(p), fix="use an earlier checkpoint of the run") from None
        elif name == "meta.json":
            try:
                meta = json.loads(p.read_text())
                if not isinstance(meta, dict):
                    raise TypeError
            except (json.JSONDecodeError, TypeError, UnicodeDecodeError):
                raise CheckpointError(f"checkpoint file {name} is corrupt (not a JSON object)", where=str(p),
                                      fix="use an earlier checkpoint of the run") from None
    return CheckpointData(tensors, meta)


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return sorted(p for p in Path(ckpt_root).glob("step_*") if (p / MANIFEST).is_file())


def find_latest(ckpt_root: Path) -> Path | None:
    """The newest checkpoint that verifies; a corrupt newest one is reported and skipped."""
    ckpt_root = Path(ckpt_root)
    candidates = complete_checkpoints(ckpt_root)
    pointer = ckpt_root / LATEST
    if pointer.is_file():
        named = ckpt_root / pointer.read_text().strip()
        if named in candidates:  # the pointer only ever names a complete checkpoint
            candidates.remove(named)
            candidates.append(named)
    for c in reversed(candidates):
        try:
            verify(c)
            return c
        except CheckpointError as exc:
            warnings.warn(f"skipping checkpoint {c.name}: {exc.what}", stacklevel=2)
    return None


def resolve_checkpoint(path: Path) -> Path:
    """A run directory, its checkpoints/ folder or one checkpoint -> one verified checkpoint dir."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist", fix="pass a run directory written by `fmkit train`")
    if (path / MANIFEST).exists():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = find_latest(root)
    if found is None:
        done = complete_checkpoints(root)
        if done:
            verify(done[-1])  # every one is damaged: name what is wrong with the newest
        raise CheckpointError(f"no usable checkpoint under {path}", where=str(root),
                              fix="train first (`fmkit train RECIPE --out DIR`), or check the run directory")
    return found


# -- optimizer state <-> tensors + JSON ------------------------------------------------------
def optimizer_to_flat(sd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into safetensors tensors and a JSON-able remainder."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in extra.get("scalars", {}).items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": extra["param_groups"]}


def load_torch_weights(path: Path) -> dict[str, Tensor]:
    """Import weights from a ``.pt``/``.pth`` file safely: ``torch.load(weights_only=True)``, which
    refuses any pickled object that is not a tensor or plain container (no code runs)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends: refused, never executed
        raise CheckpointError(
            f"refused to load {path}: it is not a plain tensor file ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})",
            where=str(path), fix="only load weights you trust, saved as safetensors or a plain state_dict",
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors", where=str(path))
    return obj


# -- what a checkpoint must match ------------------------------------------------------------
RECIPE_SECTIONS = ("model", "data", "path", "source")


def fingerprint_diff(theirs: Mapping[str, Any], ours: Mapping[str, Any], sections: tuple[str, ...] = RECIPE_SECTIONS,
                     ours_label: str = "this recipe") -> list[str]:
    """The differing key paths of a checkpoint's fingerprint and ours, each as ``model.hidden: 8 in
    the checkpoint, 16 in this recipe`` (a key one side lacks shows as ``absent``). A recipe
    checkpoint from before path and source were recorded (model and data only) is held to the options
    it recorded."""
    legacy = "path" in ours and "path" not in theirs and "model" in theirs
    out: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) if legacy else set(a) | set(b), key=str):
                walk(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{key}.{k}")
        elif _jsonish(a) != _jsonish(b):
            out.append(f"{key}: {_show(a)} in the checkpoint, {_show(b)} in {ours_label}")

    for s in sections:
        a, b = theirs.get(s, _ABSENT), ours.get(s, _ABSENT)
        if legacy and a is _ABSENT:
            continue
        walk(a, b, s)
    return out


_ABSENT = object()


def _jsonish(v: Any) -> Any:
    """``v`` as it reads back from a checkpoint's meta.json (tuples are lists there)."""
    return [_jsonish(x) for x in v] if isinstance(v, (list, tuple)) else v


def _show(v: Any) -> str:
    return "absent" if v is _ABSENT else repr(v)


def check_fingerprint(theirs: Mapping[str, Any], ours: Mapping[str, Any], where: str, *,
                      sections: tuple[str, ...] = RECIPE_SECTIONS, fix: str | None = None,
                      ours_label: str = "this recipe") -> None:
    """Refuse a checkpoint whose fingerprint differs from ``ours`` in ``sections``, naming every difference."""
    diff = fingerprint_diff(theirs, ours, sections, ours_label)
    if diff:
        parts = list(dict.fromkeys(d.split(":", 1)[0].split(".", 1)[0] for d in diff))
        raise CheckpointError(
            f"the checkpoint was written for a different {' and '.join(parts)}: " + "; ".join(diff), where=where,
            fix=fix or "resume with the run's own recipe (recipe.yaml in the run directory), or start a new run")
