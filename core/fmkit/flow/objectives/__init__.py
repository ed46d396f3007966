"""Training objectives: built once from the flow's parts, called per micro-step with the model and
a batch (the :class:`Objective` protocol). :class:`CFMObjective` is conditional flow matching
(Lipman et al. 2022); :class:`MeanFlowObjective` learns the average velocity u(z, r, t) for one-step
generation (Geng et al. 2025)."""

from fmkit.flow.objectives.base import ModelFn, Objective, TimeSampler, uniform_time
from fmkit.flow.objectives.cfm import CFMObjective
from fmkit.flow.objectives.meanflow import AverageVelocityJVP, MeanFlowObjective

__all__ = ["AverageVelocityJVP", "CFMObjective", "MeanFlowObjective", "ModelFn", "Objective", "TimeSampler",
           "uniform_time"]
