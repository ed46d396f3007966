"""``fmkit export RUN DIR``: one checkpoint of a run as a self-contained model folder (the layout is
in :mod:`fmkit.app.model_folder`), ready for the Hugging Face Hub (``fmkit push``) or for
``fmkit sample DIR`` / ``fmkit evaluate DIR`` anywhere fmkit and the run's plugins are installed.

The folder is written beside its destination and renamed into place, so a failed export leaves
nothing half-made.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmkit.app.model_folder import CARD_FILE, FORMAT, META_FILE, MODEL_FILE, PICTURE_FILE, is_model_folder, \
    weights_kind
from fmkit.errors import FmkitError, OutputError


@dataclass
class Exported:
    """What :func:`export_run` wrote: the folder, its files, the step and the metrics of its card."""

    path: Path
    files: list[Path]
    step: int
    metrics: dict[str, float] = field(default_factory=dict)


def export_run(run: Path, out: Path, *, checkpoint: str | None = None, license: str = "other",
               pipeline_tag: str | None = None, repo_id: str | None = None, overwrite: bool = False) -> Exported:
    """Write the model folder of RUN's checkpoint (the newest that loads, or ``checkpoint``) to ``out``.

    Args:
        run: the run directory.
        out: the folder to write (new, empty, or with ``overwrite`` an earlier export).
        checkpoint: a step or checkpoint folder of RUN (default: the newest).
        license: the Hugging Face license id of the card's metadata.
        pipeline_tag: the Hub's task for the card's metadata, or None.
        repo_id: ``ORG/NAME`` the folder is meant for (its card then shows ``hf://ORG/NAME``).
        overwrite: replace ``out`` when it holds an earlier export.

    Returns:
        The folder, its files, the step exported and the metrics its card states.
    """
    from fmkit.app.inference import pick_checkpoint
    from fmkit.app.model_card import measured_evaluation, render_card
    from fmkit.app.run import PROVENANCE_FILE, load_run_recipe
    from fmkit.engine.checkpoint import load_checkpoint, load_resolved
    from fmkit.engine.files import _sha256, save_tensors

    run, out = Path(run), Path(out)
    if is_model_folder(run):
        raise FmkitError(f"{run} is a model folder already, not a run", where=str(run),
                         fix=f"push it as it is (`fmkit push {run} ORG/NAME`), or export from the run it came from")
    rec = load_run_recipe(run)
    if checkpoint is None:
        ck, data = load_resolved(run)
    else:
        ck = pick_checkpoint(run, checkpoint)
        data = load_checkpoint(ck)
    kind = weights_kind(rec.eval.use_ema, data.tensors)
    weights, step = data.tensors[kind], int(data.meta["step"])
    provenance = data.meta.get("provenance") or _read_json(run / PROVENANCE_FILE)
    evaluation = measured_evaluation(run, step, rec, kind)
    picture = _picture(run, step)
    _check_destination(out, overwrite)

    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_tensors(weights, tmp / MODEL_FILE)
        shutil.copyfile(run / "recipe.yaml", tmp / "recipe.yaml")
        if picture is not None:
            shutil.copyfile(picture, tmp / PICTURE_FILE)
        meta = {"library": "fmkit", "format": FORMAT, "name": rec.name, "step": step, "weights": kind,
                "parameters": sum(t.numel() for t in weights.values()),
                "exported_from": {"run": run.resolve().name, "checkpoint": ck.name},
                "fingerprint": data.meta.get("fingerprint") or {}, "provenance": provenance,
                "evaluation": evaluation,
                "files": {name: _sha256(tmp / name) for name in (MODEL_FILE, "recipe.yaml")}}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / CARD_FILE).write_text(render_card(meta, rec, license=license, pipeline_tag=pipeline_tag,
                                                 repo_id=repo_id, folder_name=out.name,
                                                 picture=PICTURE_FILE if picture is not None else None))
        _move_into_place(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"cannot write the model folder {out}: {exc.strerror or exc}", where=str(out),
                          fix="pick a DIR you can write to, with space for the model") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p for p in out.iterdir() if p.is_file())
    return Exported(out, files, step, dict(evaluation["metrics"]) if evaluation else {})


def _check_destination(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that holds anything but (with ``overwrite``) an earlier export."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder", where=str(out), fix="pick another DIR")
    if not any(out.iterdir()):
        return
    if not is_model_folder(out):
        raise OutputError(f"{out} already exists and is not an fmkit model folder", where=str(out),
                          fix="pick a new or empty DIR (--overwrite replaces only an earlier export)")
    if not overwrite:
        raise OutputError(f"{out} already holds an exported model", where=str(out),
                          fix="pass --overwrite to replace it, or pick another DIR")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` to ``out`` (an earlier export there is removed only after)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _picture(run: Path, step: int) -> Path | None:
    """A PNG the run's writers drew at ``step`` (``samples_step0000040.png``, ...), or None."""
    found = sorted((run / "samples").glob(f"*step{step:07d}*.png"), key=lambda p: (not p.name.startswith("samples"),
                                                                                   p.name))
    return found[0] if found else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
