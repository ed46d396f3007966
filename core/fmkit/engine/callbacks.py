"""What a fit calls back into: :class:`Callback` hooks, and the shapes of metrics and writers.

A metric maps generated samples and the dataset to named numbers; a writer turns samples into files
(grids, WAVs, XYZ) in the run's ``samples/`` folder and returns their paths. A metric may also have
``check(dataset)``, which a fit calls before its first step: what would fail at the first evaluation
(a judge's weights not yet trained) fails there, not after the training it would have scored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from fmkit.flow.data import Dataset
from fmkit.flow.state import State

#: ``metric(samples, dataset) -> {name: value}``
Metric = Callable[[State, Dataset], Mapping[str, float]]
#: ``writer(samples, out_dir, dataset, step) -> written paths``
Writer = Callable[[State, Path, Dataset, int], Sequence[Path]]


class TrainerView(Protocol):
    """What a callback is handed: the :class:`~fmkit.engine.trainer.Trainer` running the fit, by the
    members callbacks use (the trainer module imports this one, so the trainer is described, not imported)."""

    step: int  # optimizer steps done
    model: nn.Module  # the raw weights (``trainer.ema.model``: the EMA's, when it keeps one)
    device: torch.device
    is_main: bool  # rank 0 (the one that writes)
    run_dir: Path | None

    def log(self, scalars: Mapping[str, float]) -> None: ...
    def request_stop(self, reason: str = "requested") -> None: ...


class Callback:
    """Hooks into the training loop; override what you need. ``trainer`` gives access to everything;
    ``trainer.log({...})`` adds scalars to metrics.csv (and the trackers) at the current step and
    ``trainer.request_stop(reason)`` ends training after this step (with a checkpoint and the final
    evaluation; a later resume continues to ``trainer.steps``), and the run then says "stopped at step N of
    M by <reason>" (``reason`` such as ``the wall-clock guard (58 minutes)``) in its final table, its
    checkpoint's meta and ``stopped.json``. Every rank runs the hooks under DDP.
    """

    def on_train_start(self, trainer: TrainerView) -> None: ...
    def on_step_end(self, trainer: TrainerView, step: int) -> None: ...
    def on_eval_end(self, trainer: TrainerView, step: int, metrics: Mapping[str, float]) -> None: ...
    def on_checkpoint(self, trainer: TrainerView, step: int, path: Path) -> None: ...
    def on_train_end(self, trainer: TrainerView) -> None: ...
