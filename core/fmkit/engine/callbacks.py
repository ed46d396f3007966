"""What a fit calls back into: :class:`Callback` hooks, and the shapes of metrics and writers.

A metric maps generated samples and the dataset to named numbers; a writer turns samples into files
(grids, WAVs, XYZ) in the run's ``samples/`` folder and returns their paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fmkit.flow.data import Dataset
from fmkit.flow.state import State

if TYPE_CHECKING:
    from fmkit.engine.trainer import Trainer

#: ``metric(samples, dataset) -> {name: value}``
Metric = Callable[[State, Dataset], Mapping[str, float]]
#: ``writer(samples, out_dir, dataset, step) -> written paths``
Writer = Callable[[State, Path, Dataset, int], Sequence[Path]]


class Callback:
    """Hooks into the training loop; override what you need. ``trainer`` gives access to everything;
    ``trainer.log({...})`` adds scalars to metrics.csv at the current step and
    ``trainer.request_stop(reason)`` ends training after this step (with a checkpoint and the final
    evaluation; a later resume continues to ``trainer.steps``). Every rank runs the hooks under DDP.
    """

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, step: int) -> None: ...
    def on_eval_end(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None: ...
    def on_checkpoint(self, trainer: Trainer, step: int, path: Path) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...
