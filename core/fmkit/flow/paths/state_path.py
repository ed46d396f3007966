"""The path of a whole state: per-field paths composed, one per field, a default for the rest."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from fmkit.flow.paths.base import PathSample, ProbPath, _path_takes_step, check_output
from fmkit.flow.paths.discrete import DiscretePath
from fmkit.flow.state import State, field_mask, fields, is_categorical, passengers


class StatePath:
    """Per-field paths composed into the path of a state (``mask``/``cond`` pass through)."""

    def __init__(self, default: ProbPath, per_field: Mapping[str, ProbPath] | None = None) -> None:
        self.default = default
        self.per_field = dict(per_field or {})

    def for_field(self, name: str, value: Tensor | None = None) -> ProbPath:
        if name in self.per_field:
            return self.per_field[name]
        if value is not None and is_categorical(value) and not isinstance(self.default, DiscretePath):
            raise ValueError(
                f"field {name!r} holds class indices but its path is {type(self.default).__name__}; "
                f"give it a discrete path (path.fields.{name}.name: discrete)"
            )
        return self.default

    def sample(self, x0: State, x1: State, t: Tensor) -> PathSample:
        xt: State = {}
        dxt: dict[str, Tensor | None] = {}
        for k, v1 in fields(x1).items():
            ps = self.for_field(k, v1).sample(x0[k], v1, t)
            xt[k], dxt[k] = ps.x_t, ps.dx_t
        xt.update(passengers(x1))
        return PathSample(t, xt, dxt)

    def losses(self, pred: State, ps: PathSample, x1: State, reduce: bool = False) -> dict[str, Tensor]:
        """Per-field losses: per example ``{field: [B]}``, or with ``reduce`` their batch means (scalars)."""
        check_output(pred, x1)
        out = {}
        for k, v1 in fields(x1).items():
            field_ps = PathSample(ps.t, ps.x_t[k], ps.dx_t[k])
            path = self.for_field(k, v1)
            out[k] = (path.batch_loss if reduce else path.loss)(pred[k], field_ps, v1, field_mask(x1, k))
        return out

    def velocity(self, pred: State, x_t: State, t: Tensor, step: float | None = None) -> State:
        """Per-field velocities; ``step`` (a solver's step size) reaches the paths whose velocity
        takes it (their rate averaged over the step; see :meth:`DiscretePath.velocity`)."""
        check_output(pred, x_t)
        out = {}
        for k, v in fields(x_t).items():
            path = self.for_field(k, v)
            out[k] = path.velocity(pred[k], v, t, step=step) if step is not None and _path_takes_step(type(path)) \
                else path.velocity(pred[k], v, t)
        return out
