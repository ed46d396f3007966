"""Crash-safe checkpoints that load without executing code.

A checkpoint is a directory ``checkpoints/step_NNNNNNN/`` of safetensors files (weights, EMA,
optimizer tensors, RNG states) and JSON (step, data position, optimizer hyper-parameters, recipe
fingerprint), plus ``MANIFEST.json`` with the sha256 of every file. It is written into a temporary
directory, each file fsynced, then renamed into place; ``checkpoints/latest`` is replaced
atomically afterwards, and older checkpoints are pruned only once the new one is complete. Nothing
is ever unpickled: safetensors and JSON only.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from fmkit.engine.files import _fsync_dir, _sha256, _write_bytes, disk_full, save_tensors, write_atomic_text
from fmkit.errors import CheckpointError, OutputError, note

MANIFEST = "MANIFEST.json"
LATEST = "latest"
FORMAT_VERSION = 1


@dataclass
class CheckpointData:
    """Everything a checkpoint holds, as tensors and JSON-able values."""

    tensors: dict[str, dict[str, Tensor]]  # group name -> safetensors dict (model, ema, optim, rng)
    meta: dict[str, Any] = field(default_factory=dict)  # step, data position, fingerprint, ...




def step_dir_name(step: int) -> str:
    return f"step_{step:09d}"


def _step_of(path: Path) -> int:
    """The step a ``step_N`` directory name holds (-1 for a name that is not one): checkpoints are
    ordered by it, not by their names as text (``step_1000000000`` sorts before ``step_999999999``)."""
    digits = path.name.removeprefix("step_")
    return int(digits) if digits.isdigit() else -1


def save_checkpoint(ckpt_root: Path, step: int, data: CheckpointData, keep: int = 2) -> Path:
    """Write checkpoint ``step`` under ``ckpt_root`` atomically; keep the newest ``keep``. A write that
    fails (a full disk) removes its temporary directory, leaves the older checkpoints as they were and
    raises :class:`OutputError`."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / f".tmp-{step_dir_name(step)}-{os.getpid()}"
    try:
        _write_checkpoint(tmp, data, step)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        done = complete_checkpoints(ckpt_root)
        kept = f"the previous checkpoint, {done[-1].name}, is intact" if done else "no earlier checkpoint exists"
        cause = "no space left on the device" if disk_full(exc) else f"{exc.strerror or exc}"
        raise OutputError(f"cannot write the checkpoint of step {step}: {cause}; nothing of it was kept and {kept}",
                          where=str(ckpt_root), fix="free space on that disk (or lower trainer.keep_checkpoints)"
                          if disk_full(exc) else "make the run's checkpoints/ folder writable") from None
    if final.exists():  # a re-save of the same step (e.g. an interrupt right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    try:
        write_atomic_text(ckpt_root / LATEST, final.name + "\n")
    except OSError:  # the checkpoint is complete: no pointer (the newest is found by number) beats a stale one
        (ckpt_root / LATEST).unlink(missing_ok=True)
    _prune(ckpt_root, keep)
    return final


def _write_checkpoint(tmp: Path, data: CheckpointData, step: int) -> None:
    """Every file of a checkpoint into the (new) directory ``tmp``, fsynced, with its manifest."""
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


def set_aside_newer(ckpt_root: Path, start: Path) -> list[Path]:
    """Move the checkpoints newer than ``start`` into ``ckpt_root/abandoned-<start step>/`` (a run
    continued from an older checkpoint must not find them as its latest; nothing is deleted) and
    point ``latest`` at ``start``. Returns their new paths."""
    ckpt_root, step = Path(ckpt_root), _step_of(Path(start))
    newer = [p for p in ckpt_root.glob("step_*") if p.is_dir() and _step_of(p) > step]
    if not newer:
        return []
    dest = ckpt_root / f"abandoned-{step_dir_name(step)}"
    dest.mkdir(exist_ok=True)
    moved = []
    for p in sorted(newer, key=_step_of):
        target = dest / p.name
        if target.exists():
            shutil.rmtree(target)
        os.replace(p, target)
        moved.append(target)
    write_atomic_text(ckpt_root / LATEST, Path(start).name + "\n")
    _fsync_dir(ckpt_root)
    return moved


def _prune(ckpt_root: Path, keep: int) -> None:
    done = complete_checkpoints(ckpt_root)
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
        manifest = json.loads(_read_bytes(man_path))
        files = manifest["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{man_path} is corrupt", where=str(man_path), fix=EARLIER) from None
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint format {manifest.get('format')!r} is not supported (expected "
                              f"{FORMAT_VERSION})", where=str(ckpt), fix="use the fmkit version that wrote it")
    for name, digest in files.items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise CheckpointError(f"manifest names an unsafe file {name!r}", where=str(man_path))
        p = ckpt / name
        if not p.is_file():
            raise CheckpointError(f"checkpoint file {name} is missing", where=str(ckpt),
                                  fix=EARLIER)
        try:
            actual = _sha256(p)
        except OSError as exc:
            raise _unreadable(p, exc) from None
        if actual != digest:
            raise CheckpointError(f"checkpoint file {name} is corrupt or truncated (checksum mismatch)",
                                  where=str(p), fix=EARLIER)
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise CheckpointError(f"the manifest of {ckpt.name} lists no {' or '.join(missing)}: the checkpoint is "
                              "incomplete", where=str(man_path), fix=EARLIER)


#: how to go on from a damaged checkpoint, for every checkpoint error (`train --resume` falls back by itself)
EARLIER = ("an older intact checkpoint of the run is used automatically by `fmkit train --resume`; pick one "
           "with `--checkpoint STEP` (see checkpoints/), or delete the damaged directory")
#: files every fmkit checkpoint has (the optimizer, EMA and RNG groups are checked where they are used)
REQUIRED_FILES = ("model.safetensors", "meta.json")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: OSError) -> CheckpointError:
    return CheckpointError(f"cannot read the checkpoint file {path.name}: {exc.strerror or exc}", where=str(path),
                           fix="give this user read permission on the run directory (chmod -R u+r RUN), or "
                               "copy the run somewhere readable")


def check_meta(meta: Any, where: str, manifest_step: Any = None) -> dict[str, Any]:
    """``meta`` if it has what a resume needs: a non-negative integer ``step`` (equal to the
    manifest's), and the optimizer's JSON part; else a :class:`CheckpointError` naming the key."""
    if not isinstance(meta, dict):
        raise CheckpointError("checkpoint file meta.json is corrupt (not a JSON object)", where=where, fix=EARLIER)
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"checkpoint meta.json has step = {step!r}, not a non-negative integer",
                              where=f"{where}: step", fix=EARLIER)
    if manifest_step is not None and manifest_step != step:
        raise CheckpointError(f"checkpoint meta.json says step {step} but its manifest says {manifest_step!r}",
                              where=f"{where}: step", fix=EARLIER)
    opt = meta.get("optimizer")
    if opt is not None and not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)):
        raise CheckpointError("checkpoint meta.json has no valid optimizer record (param_groups)",
                              where=f"{where}: optimizer", fix=EARLIER)
    return meta


def check_optimizer_tensors(tensors: Mapping[str, Tensor], extra: Mapping[str, Any], where: str) -> None:
    """Every parameter with optimizer state has the same state entries (AdamW: step, exp_avg,
    exp_avg_sq), so a tensor lost from the file is named here, not as a KeyError mid-step."""
    per_param: dict[str, set[str]] = {}
    for key in [*tensors, *extra.get("scalars", {})]:
        pid, _, name = str(key).partition(".")
        if not pid.isdigit() or not name:
            raise CheckpointError(f"the optimizer state holds an entry {key!r} that is not '<param>.<name>'",
                                  where=f"{where}: optimizer.safetensors", fix=EARLIER)
        per_param.setdefault(pid, set()).add(name)
    if not per_param:
        return
    every = set().union(*per_param.values())
    for pid in sorted(per_param, key=int):
        lost = every - per_param[pid]
        if lost:
            raise CheckpointError(f"the optimizer state of parameter {pid} lacks {sorted(lost)} (the other "
                                  "parameters have them): the checkpoint is damaged",
                                  where=f"{where}: optimizer.safetensors", fix=EARLIER)


def load_checkpoint(ckpt: Path) -> CheckpointData:
    """Verify checksums and read a checkpoint directory (safetensors + JSON only); its meta and
    optimizer state are checked for what a resume needs (:func:`check_meta`)."""
    ckpt = Path(ckpt)
    verify(ckpt)
    manifest = json.loads(_read_bytes(ckpt / MANIFEST))
    tensors: dict[str, dict[str, Tensor]] = {}
    meta: Any = {}
    for name in manifest["files"]:
        p = ckpt / name
        if name.endswith(".safetensors"):
            try:
                tensors[name[: -len(".safetensors")]] = load_file(str(p))
            except PermissionError as exc:
                raise _unreadable(p, exc) from None
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(f"checkpoint file {name} is not a valid safetensors file: {exc}",
                                      where=str(p), fix=EARLIER) from None
        elif name == "meta.json":
            try:
                meta = json.loads(_read_bytes(p))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"checkpoint file {name} is corrupt (not a JSON object)", where=str(p),
                                      fix=EARLIER) from None
    meta = check_meta(meta, str(ckpt / "meta.json"), manifest.get("step"))
    if "optimizer" in tensors or meta.get("optimizer") is not None:
        check_optimizer_tensors(tensors.get("optimizer", {}), meta.get("optimizer") or {}, str(ckpt))
    return CheckpointData(tensors, meta)


def has_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint, intact or not (a ``step_*`` folder or the ``latest``
    pointer; a temporary folder a kill left mid-write does not count): the one test of "is there a run
    here to resume, and not to overwrite"."""
    root = Path(run_dir) / "checkpoints"
    return (root / LATEST).exists() or any(p.is_dir() for p in root.glob("step_*"))


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (by step number)."""
    done = [p for p in Path(ckpt_root).glob("step_*") if _step_of(p) >= 0 and (p / MANIFEST).is_file()]
    return sorted(done, key=_step_of)


def read_pointer(ckpt_root: Path) -> Path | None:
    """The checkpoint ``checkpoints/latest`` names, or None when it is absent or is not a name (a
    damaged pointer only costs the preference it gives: every checkpoint is still looked at)."""
    try:
        name = (Path(ckpt_root) / LATEST).read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not name.startswith("step_") or "/" in name or "\\" in name:
        return None
    return Path(ckpt_root) / name


def usable(ckpt: Path) -> None:
    """Raise :class:`CheckpointError` unless ``ckpt`` verifies and its meta and optimizer state hold
    what a resume needs (the checks of :func:`load_checkpoint`, without reading the weights)."""
    verify(ckpt)
    try:
        meta = json.loads(_read_bytes(ckpt / "meta.json"))
        manifest = json.loads(_read_bytes(ckpt / MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError("checkpoint file meta.json is corrupt (not a JSON object)",
                              where=str(ckpt / "meta.json"), fix=EARLIER) from None
    meta = check_meta(meta, str(ckpt / "meta.json"), manifest.get("step"))
    opt_file = ckpt / "optimizer.safetensors"
    if meta.get("optimizer") is not None and opt_file.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(opt_file), framework="pt") as f:
                keys = dict.fromkeys(f.keys())
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint file optimizer.safetensors is not a valid safetensors file: {exc}",
                                  where=str(opt_file), fix=EARLIER) from None
        check_optimizer_tensors(keys, meta["optimizer"], str(ckpt))  # type: ignore[arg-type]


def find_latest(ckpt_root: Path) -> Path | None:
    """The newest usable checkpoint; a damaged newer one is skipped with a note naming what is wrong."""
    ckpt_root = Path(ckpt_root)
    candidates = complete_checkpoints(ckpt_root)
    named = read_pointer(ckpt_root)
    if named in candidates:  # the pointer only ever names a complete checkpoint
        candidates.remove(named)
        candidates.append(named)
    for c in reversed(candidates):
        try:
            usable(c)
            return c
        except CheckpointError as exc:
            older = "the next older checkpoint is tried" if c != candidates[0] else "it is the oldest one kept"
            note(f"skipping checkpoint {c.name}: {exc.what}", where=exc.where,
                 fix=f"{older}; delete the damaged directory to silence this note")
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
        if done:  # every one is damaged: name what is wrong with the newest
            try:
                usable(done[-1])
            except CheckpointError as exc:
                raise CheckpointError(f"every checkpoint under {root} is damaged; the newest, {done[-1].name}: "
                                      f"{exc.what}", where=exc.where,
                                      fix="restore checkpoints/ from a backup, or start a new run") from None
        raise CheckpointError(f"no usable checkpoint under {path}", where=str(root),
                              fix="train first (`fmkit train RECIPE --out DIR`), or check the run directory")
    return found


def load_resolved(path: Path) -> tuple[Path, CheckpointData]:
    """Load the checkpoint ``path`` names (:func:`resolve_checkpoint`). For a run directory or its
    checkpoints/ folder, a newest checkpoint that fails to load is skipped with a note and the next
    older one that loads is used; an explicitly named step directory is loaded as it is."""
    chosen = resolve_checkpoint(path)
    try:
        return chosen, load_checkpoint(chosen)
    except CheckpointError as first:
        if Path(path) == chosen:
            raise
        older = [c for c in complete_checkpoints(chosen.parent) if _step_of(c) < _step_of(chosen)]
        for c in reversed(older):
            note(f"skipping checkpoint {chosen.name}: {first.what}", where=first.where,
                 fix=f"{c.name}, the next older intact checkpoint, is used instead")
            try:
                return c, load_checkpoint(c)
            except CheckpointError as exc:
                chosen, first = c, exc
        raise first

