"""Starting a run from another run's weights (``trainer.init_from``), and the record of where a
run's weights came from (its lineage): ``lineage.json`` holds the ``init_from`` record of a fresh run
and, under ``resumes``, the ``--set`` overrides each resume trained with (the run's ``recipe.yaml``
stays the recipe it was started from).

k-rectified flow starts the (k+1)-th flow from the k-th one's weights and distillation starts the
student from its teacher (Liu et al. 2022, "Flow Straight and Fast"); any fine-tuning does the same.
The weights must fit the new model tensor by tensor: a mismatch is refused, naming the tensors.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from fmkit.engine import checkpoint as ckpt
from fmkit.engine.files import write_atomic_text
from fmkit.engine.train_state import load_model_state
from fmkit.errors import CheckpointError, OutputError

LINEAGE_FILE = "lineage.json"


def init_from_run(model: nn.Module, source: str | Path, use_ema: bool = True) -> dict[str, Any]:
    """Load the weights of ``source`` (a run directory, its checkpoints/ folder or one checkpoint)
    into ``model``: the EMA weights when ``use_ema`` and the run kept them, else the raw ones.

    Returns the lineage record: where the weights came from (run, checkpoint, its step, which
    weights), the source run's fingerprint and that run's own lineage, so a chain of reflows and
    distillations can be traced back to the first run."""
    where = f"trainer.init_from ({source})"
    try:
        ck = ckpt.resolve_checkpoint(Path(source))
    except CheckpointError as exc:
        raise CheckpointError(f"trainer.init_from: {exc.what}", where=where,
                              fix="point trainer.init_from at a run directory written by `fmkit train` (or one of "
                                  "its checkpoints/step_* folders)") from None
    data = ckpt.load_checkpoint(ck)
    which = "ema" if use_ema and "ema" in data.tensors else "model"
    run = ck.parent.parent if ck.parent.name == "checkpoints" else ck.parent
    load_model_state(model, data.tensors[which], f"trainer.init_from: {ck}",
                     fix=f"trainer.init_from needs a model of the same architecture as the run's: copy its `model:` "
                         f"section (and the data it was built for) from {run / 'recipe.yaml'}, or drop init_from")
    return {"init_from": str(Path(source).resolve()), "checkpoint": str(ck.resolve()),
            "step": int(data.meta.get("step", -1)), "weights": which,
            "fingerprint": data.meta.get("fingerprint") or {}, "parent_lineage": data.meta.get("lineage")}


def read_lineage(run_dir: Path) -> dict[str, Any]:
    """``run_dir/lineage.json`` (``{}`` when the run has none); a damaged one is refused, naming it."""
    path = Path(run_dir) / LINEAGE_FILE
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot read the run's {LINEAGE_FILE}: {exc}", where=str(path),
                          fix="restore it from a copy of the run, or delete it (the run then forgets where its "
                              "weights came from and the overrides of its resumes)") from None
    resumes = record.get("resumes", []) if isinstance(record, dict) else None
    if not isinstance(resumes, list) or not all(isinstance(r, dict) and isinstance(r.get("overrides"), list)
                                                and all(isinstance(o, str) for o in r["overrides"]) for r in resumes):
        raise OutputError(f"the run's {LINEAGE_FILE} is not a lineage record (its resumes must each list their "
                          "overrides as strings)", where=str(path),
                          fix="restore it from a copy of the run, or delete it")
    return record


def record_resume(run_dir: Path, step: int, overrides: Sequence[str]) -> Path:
    """Add a resume's ``--set`` ``overrides`` (and the ``step`` it continued from) to the ``resumes`` of
    ``run_dir/lineage.json``, in order: later resumes train with them too (:func:`resume_overrides`)."""
    record = read_lineage(run_dir)
    record.setdefault("resumes", []).append({"step": int(step), "overrides": list(overrides),
                                              "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return write_lineage(run_dir, record)


def resume_overrides(run_dir: Path) -> list[str]:
    """The ``--set`` overrides of the run's earlier resumes, oldest first (the later of two on a key wins)."""
    return [o for r in read_lineage(run_dir).get("resumes", []) for o in r["overrides"]]


def write_lineage(run_dir: Path, record: dict[str, Any]) -> Path:
    """``run_dir/lineage.json``, written atomically."""
    path = Path(run_dir) / LINEAGE_FILE
    write_atomic_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def start_from(source: str | Path, use_ema: bool, model: nn.Module, ema: Any, run_dir: Path | None) -> dict[str, Any]:
    """A fresh run's ``trainer.init_from``: ``source``'s weights into ``model`` (and its EMA copy), the
    lineage recorded in ``run_dir`` so the run says what it was started from.

    Args:
        source: a run directory, its checkpoints/ folder or one checkpoint to take the weights from.
        use_ema: take the source's EMA weights when it kept them, else its raw ones.
        model: the model to load into (modified in place).
        ema: the run's EMA holder (its ``.model`` gets the same weights); None without EMA.
        run_dir: where ``lineage.json`` is written; None: not written (no run directory, or not rank 0).

    Returns:
        The lineage record (:func:`init_from_run`): source run, checkpoint, step, which weights, and the
        source's fingerprint and own lineage.
    """
    record = init_from_run(model, source, use_ema)
    if ema is not None:
        ema.model.load_state_dict(model.state_dict())
    if run_dir is not None:
        write_lineage(run_dir, record)
    return record
