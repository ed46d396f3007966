"""Probability paths from the source (t=0) to the data (t=1).

Affine paths (Lipman et al. 2022; notation of Lipman et al. 2024) in :mod:`.affine` with their
schedulers in :mod:`.schedulers`; the discrete mixture path (Gat et al. 2024) in :mod:`.discrete`;
the per-field contract in :mod:`.base`; :class:`StatePath` composes per-field paths into the path
of a whole state (:mod:`.state_path`).
"""

from fmkit.flow.paths.affine import AffinePath
from fmkit.flow.paths.base import SIGMA_FLOOR, PathSample, ProbPath, check_output, expand_t, takes_step
from fmkit.flow.paths.discrete import DiscretePath
from fmkit.flow.paths.schedulers import (
                                         CondOTScheduler,
                                         CosineScheduler,
                                         PolynomialScheduler,
                                         Scheduler,
                                         SchedulerOutput,
                                         VPScheduler,
                                         check_scheduler,
)
from fmkit.flow.paths.state_path import StatePath

__all__ = [
    "SIGMA_FLOOR", "AffinePath", "CondOTScheduler", "CosineScheduler", "DiscretePath", "PathSample",
    "PolynomialScheduler", "ProbPath", "Scheduler", "SchedulerOutput", "StatePath", "VPScheduler", "check_output",
    "check_scheduler", "expand_t", "takes_step",
]
