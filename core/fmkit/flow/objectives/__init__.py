"""Training objectives: built once from the flow's parts, called per micro-step with the model and
a batch (the :class:`Objective` protocol). :class:`CFMObjective` is conditional flow matching
(Lipman et al. 2022)."""

from fmkit.flow.objectives.base import ModelFn, Objective, TimeSampler, uniform_time
from fmkit.flow.objectives.cfm import CFMObjective

__all__ = ["CFMObjective", "ModelFn", "Objective", "TimeSampler", "uniform_time"]
