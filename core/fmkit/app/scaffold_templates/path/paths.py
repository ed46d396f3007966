"""An affine path with a trigonometric scheduler."""

import math
from typing import Literal

import torch
from fmkit.plugin import Scheduler
from pydantic import BaseModel, ConfigDict


class PathOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction: Literal["velocity", "x1"] = "velocity"


class SineScheduler(Scheduler):
    """alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2), with their derivatives."""

    def __call__(self, t: torch.Tensor):
        a = 0.5 * math.pi
        return torch.sin(a * t), torch.cos(a * t), a * torch.cos(a * t), -a * torch.sin(a * t)
