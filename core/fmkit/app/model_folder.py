"""A model folder: one set of trained weights and what it takes to use them, the unit that
``fmkit export`` writes, ``fmkit push`` uploads and ``fmkit sample`` / ``evaluate`` load (a local
folder, or a Hugging Face Hub snapshot, see :mod:`fmkit.app.hub`)::

    model.safetensors   the weights the run samples with (its EMA's when eval.use_ema)
    recipe.yaml         the run's resolved recipe
    fmkit.json          format, step, which weights, the recipe fingerprint, provenance (fmkit, torch,
                        python; for each component the plugin, distribution and version that made it),
                        what the run's final evaluation measured, and the sha256 of every file
    README.md           the model card (Hugging Face metadata front matter)
    sample.png          a picture of the run's samples at that step, when it drew one

Nothing is unpickled: safetensors, YAML and JSON only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from fmkit.errors import CheckpointError, DependencyError, FmkitError

MODEL_FILE = "model.safetensors"
META_FILE = "fmkit.json"
CARD_FILE = "README.md"
PICTURE_FILE = "sample.png"
FORMAT = 1


def is_model_folder(path: Path) -> bool:
    """Whether ``path`` is a model folder (an ``fmkit.json`` beside no ``checkpoints/``: not a run)."""
    path = Path(path)
    return (path / META_FILE).is_file() and not (path / "checkpoints").is_dir()


@dataclass(frozen=True)
class ModelFolder:
    """A model folder's path and its ``fmkit.json``."""

    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def components(self) -> dict[str, dict[str, Any]]:
        """``{"models.mlp": {plugin, distribution, version}, ...}``: who made each component."""
        return dict((self.meta.get("provenance") or {}).get("components") or {})


def read_model_folder(path: Path) -> ModelFolder:
    """``path``'s ``fmkit.json``, checked for the keys loading needs (a CheckpointError names what is wrong)."""
    path = Path(path)
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not an fmkit model folder (no {META_FILE})", where=str(path),
                              fix="pass a folder written by `fmkit export RUN DIR`, a run directory, or "
                                  "hf://ORG/NAME of a model pushed with `fmkit push`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{META_FILE} cannot be read: {exc}", where=str(meta_path),
                              fix="export the run again (`fmkit export RUN DIR`)") from None
    if not isinstance(meta, dict) or meta.get("library") != "fmkit":
        raise CheckpointError(f"{META_FILE} is not an fmkit model description", where=str(meta_path),
                              fix="export the run again (`fmkit export RUN DIR`)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"model folder format {meta.get('format')!r} is not supported (expected {FORMAT})",
                              where=str(meta_path), fix=f"use the fmkit version that wrote it ({meta.get('fmkit')})")
    step, files = meta.get("step"), meta.get("files")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0 or not isinstance(files, dict) \
            or MODEL_FILE not in files or "recipe.yaml" not in files:
        raise CheckpointError(f"{META_FILE} lacks its step or its list of files", where=str(meta_path),
                              fix="export the run again (`fmkit export RUN DIR`)")
    return ModelFolder(path, meta)


def verify_files(folder: ModelFolder) -> None:
    """Refuse a folder whose files do not match the sha256 its ``fmkit.json`` lists (a cut download)."""
    from fmkit.engine.files import _sha256

    for name, digest in folder.meta["files"].items():
        if "/" in name or "\\" in name or name.startswith("."):
            raise CheckpointError(f"{META_FILE} names an unsafe file {name!r}", where=str(folder.path / META_FILE))
        p = folder.path / name
        if not p.is_file():
            raise CheckpointError(f"the model folder lacks its file {name}", where=str(folder.path),
                                  fix="download or export it again")
        if _sha256(p) != digest:
            raise CheckpointError(f"{name} is corrupt or truncated (checksum mismatch)", where=str(p),
                                  fix="download or export it again")


def check_plugins(folder: ModelFolder, registry: Any) -> None:
    """Refuse a folder whose components come from a plugin that is not loaded here, naming the
    distribution to install (``pip install fmkit-molecules``), or why an installed one is not loaded."""
    lacking: dict[str, dict[str, Any]] = {}
    for key, made in folder.components.items():
        kind, _, name = key.partition(".")
        try:
            known = name in registry.entries(kind)
        except FmkitError:  # a kind this fmkit does not have
            known = False
        if not known:
            plugin = str(made.get("plugin") or "?")
            lacking.setdefault(plugin, {**made, "provides": []})["provides"].append(key)
    if not lacking:
        return
    plugin, made = next(iter(lacking.items()))
    dist, version = made.get("distribution"), made.get("version")
    more = f" (and {len(lacking) - 1} other plugin(s): {', '.join(repr(p) for p in list(lacking)[1:])})" \
        if len(lacking) > 1 else ""
    what = (f"this model needs the plugin {plugin!r}" + (f" ({dist} {version})" if dist else "")
            + f"{more}, which is not loaded here: it provides {', '.join(made['provides'])}")
    if plugin in registry.disabled:
        fix = f"the plugin {plugin!r} is installed but disabled ({registry.disabled[plugin]}): enable it"
    elif plugin in registry.broken:
        fix = f"the plugin {plugin!r} is installed but could not be loaded; `fmkit plugins` shows why"
    elif dist:
        fix = "pip install " + " ".join(dict.fromkeys(str(m["distribution"]) for m in lacking.values()
                                                      if m.get("distribution")))
    else:
        fix = f"register the plugin {plugin!r} that made it (it was not installed from a distribution)"
    raise DependencyError(what, where=str(folder.path / META_FILE), fix=fix)


def load_weights(folder: ModelFolder) -> dict[str, Tensor]:
    """The folder's ``model.safetensors`` (checked by :func:`verify_files` first)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = folder.path / MODEL_FILE
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{MODEL_FILE} is not a valid safetensors file: {exc}", where=str(p),
                              fix="download or export it again") from None


def weights_kind(use_ema: bool, groups: Mapping[str, Any]) -> str:
    """``"ema"`` when the run samples with its EMA and the checkpoint has one, else ``"model"``: the
    weights a run's evaluation and ``fmkit sample RUN`` use, so the exported ones give their samples."""
    return "ema" if use_ema and "ema" in groups else "model"


def open_model_folder(source: str) -> tuple[ModelFolder, dict[str, Tensor]]:
    """A model folder (a path, or ``hf://ORG/NAME[@REVISION]`` fetched through the Hub's cache), its
    plugins checked, its files verified, and its weights; :func:`fmkit.app.inference.load_for_inference`
    builds its recipe around them."""
    from fmkit.app.hub import download, is_hub_ref
    from fmkit.app.registry import get_registry

    folder = read_model_folder(download(source) if is_hub_ref(source) else Path(source))
    check_plugins(folder, get_registry())
    verify_files(folder)
    return folder, load_weights(folder)
