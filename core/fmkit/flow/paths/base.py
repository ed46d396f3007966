"""What every probability path shares: the sample it draws (:class:`PathSample`), the per-field
contract (:class:`ProbPath`), and the checks of a model's output against the state."""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from fmkit.errors import ModelError
from fmkit.flow.state import State, fields, is_categorical


@dataclass
class PathSample:
    """A point on the path: time ``t`` [B], position ``x_t`` and target velocity ``dx_t``.

    For a whole state, ``x_t`` and ``dx_t`` are dicts of fields; ``dx_t`` is None for discrete fields.
    """

    t: Tensor
    x_t: Any
    dx_t: Any


SIGMA_FLOOR = 1e-3
"""Smallest sigma_t that an x1-predicting path divides by when it turns x1^ into a velocity."""


def expand_t(t: Tensor, like: Tensor) -> Tensor:
    """Reshape ``t`` [B] to broadcast against ``like`` [B, ...]."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype if like.is_floating_point() else t.dtype)


class ProbPath(ABC):
    """A conditional probability path for one tensor field."""

    @abstractmethod
    def sample(self, x0: Tensor, x1: Tensor, t: Tensor) -> PathSample:
        """Sample x_t ~ p_t(.|x0, x1) and its conditional velocity; ``t`` is [B]."""

    @abstractmethod
    def loss(self, pred: Tensor, ps: PathSample, x1: Tensor, mask: Tensor | None) -> Tensor:
        """Per-example training loss [B] for the model output ``pred``."""

    def batch_loss(self, pred: Tensor, ps: PathSample, x1: Tensor, mask: Tensor | None) -> Tensor:
        """The batch mean of :meth:`loss` (a scalar), what the trainer minimises; override it only
        with a faster way to the same number."""
        return self.loss(pred, ps, x1, mask).mean()

    @abstractmethod
    def velocity(self, pred: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """What a solver integrates, from the model output: a velocity, or for a categorical field a
        CTMC rate over classes [..., K]. A path whose ``velocity`` also takes ``step`` gets a fixed-step
        solver's step size h, to return the rate averaged over [t, t + h] (see DiscretePath)."""


def takes_step(fn: Callable) -> bool:
    """Whether ``fn`` accepts a ``step`` keyword (a path's or a sampler's velocity that can average a
    rate over a solver's step); a wrapper may say so itself in a ``takes_step`` attribute."""
    declared = getattr(fn, "takes_step", None)
    if isinstance(declared, bool):
        return declared
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return any(p.name == "step" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


@functools.cache
def _path_takes_step(cls: type) -> bool:  # once per path class, not per solver step
    return takes_step(cls.velocity)


def check_output(pred: Any, like: State, what: str = "the model") -> None:
    """Fail with a :class:`ModelError` unless ``pred`` has every field of ``like``, each of its shape
    (a categorical field, class indices [...], takes logits or rates [..., K]). Shapes only: no sync."""
    if not isinstance(pred, Mapping):
        raise ModelError(
            f"{what} returned a {type(pred).__name__}, not a dict of fields {sorted(fields(like))}",
            where="model output",
            fix="return {field: tensor}; a network on bare tensors can be wrapped in fmkit.TensorModel(net)")
    for k, v in fields(like).items():
        if k not in pred:
            raise ModelError(f"{what} returned no output for field {k!r} (it returned {sorted(pred)})",
                             where=f"model output {k!r}", fix=f"return an entry {k!r} for every field of the data")
        out = pred[k]
        shape = tuple(getattr(out, "shape", ()))
        ok = shape[:-1] == tuple(v.shape) if is_categorical(v) else shape == tuple(v.shape)
        if not isinstance(out, Tensor) or not ok:
            want = (f"{tuple(v.shape)} + (num_classes,), logits per class index" if is_categorical(v)
                    else f"{tuple(v.shape)}, the shape of the field")
            got = shape if isinstance(out, Tensor) else type(out).__name__
            raise ModelError(
                f"{what}'s output for field {k!r} has shape {got}; it must be {want}", where=f"model output {k!r}",
                fix="check the model's output layer: one value per element of the field (batch dimension first)")
