"""Generation: draw from the source and integrate the model's velocity to data."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from fmkit.errors import FmkitError
from fmkit.flow.batching import call_in_slices
from fmkit.flow.guidance import ClassifierFreeGuidance
from fmkit.flow.paths import StatePath, check_output
from fmkit.flow.self_conditioning import self_conditioned, x1_estimate
from fmkit.flow.solvers import Solution, Solver
from fmkit.flow.sources import StateSource
from fmkit.flow.state import COND, MASK, MASKS, State, fields, passengers
from fmkit.flow.two_times import require_r


def model_velocity(model: nn.Module, path: StatePath, mask: Tensor | None, cond: Tensor | None,
                   masks: Mapping[str, Tensor] | None = None, call_size: int | None = None):
    """Wrap ``model(x_t, t, cond)`` as the ``velocity(x, t_scalar[, step][, r])`` that solvers integrate
    (``step``: the step size, given by fixed-step solvers for the jumps of categorical fields; ``r``: the
    other time, given by :class:`~fmkit.flow.solvers.MeanFlowSolver`, for the average velocity
    ``model(x_t, t, cond, r=r)`` of a model with two times, returned as it is);
    ``mask`` and the per-field ``masks`` ride into every model call.

    Args:
        model: the network ``model(x_t, t, cond)`` (guided already when guidance is wanted).
        path: the state path, to turn the model's prediction (velocity, x1, rates) into the velocity.
        mask: the batch's padding mask [B, ...] (True = real entry), or None for unpadded data.
        cond: the condition per example [B, ...] (e.g. class labels [B]), or None: unconditional.
        masks: per-field masks (field name -> mask) for fields padded differently, or None.
        call_size: the most examples per model call (:func:`~fmkit.flow.batching.call_in_slices`); None: all.

    Returns:
        ``velocity(x, t, step=None, r=None) -> State``: x a state of the data fields [B, ...], t a 0-d
        time tensor, broadcast to [B] for the model. For a self-conditioned model
        (:mod:`fmkit.flow.self_conditioning`) each call hands the model the x1 estimate of the call before
        it (none at the first), and the function has ``self_conditioned = True``.
    """
    history: dict[str, State | None] = {"x1": None}
    remember = self_conditioned(model)

    def velocity(x: State, t: Tensor, step: float | None = None, r: Tensor | None = None) -> State:
        b = next(iter(x.values())).shape[0]
        tb = t.reshape(()).expand(b).to(torch.float32) if t.dtype != torch.float64 else t.reshape(()).expand(b)
        inp = dict(x)
        if mask is not None:
            inp[MASK] = mask
        if masks is not None:
            inp[MASKS] = masks
        if r is not None:
            check_two_times(model)
            rb = r.reshape(()).expand(b).to(tb.dtype)
            pred = call_in_slices(model, call_size, inp, tb, cond, r=rb)
            check_output(pred, x)
            return {k: pred[k] for k in x}  # u(x_t, r, t): an average velocity, no path conversion
        if not remember:
            return path.velocity(call_in_slices(model, call_size, inp, tb, cond), x, tb, step)
        pred = call_in_slices(model, call_size, inp, tb, cond, self_cond=history["x1"])
        history["x1"] = x1_estimate(path, pred, x, tb)  # what the next call reads (Chen et al. 2022)
        return path.velocity(pred, x, tb, step)

    velocity.self_conditioned = remember  # type: ignore[attr-defined]
    return velocity


def check_two_times(model: nn.Module) -> None:
    """Refuse a model that cannot jump: classifier-free guidance at sampling (MeanFlow folds its guidance
    into training), or a forward without the keyword ``r``."""
    if isinstance(model, ClassifierFreeGuidance):
        raise FmkitError("classifier-free guidance at sampling does not apply to a MeanFlow jump: MeanFlow folds "
                         "its guidance into the training target", where="--guidance / eval.guidance_scale",
                         fix="drop the sampling guidance (the model's guidance is objective.guidance_scale, set when "
                             "training; or train the scale as an input, objective.guidance_range, to pick it here); "
                             "for a guided ODE of the instantaneous velocity, use --solver euler")
    require_r(model, "the meanflow solver")


@torch.no_grad()
def generate(model: nn.Module, path: StatePath, source: StateSource, solver: Solver, template: State, *,
             trajectory: bool = False, x0: State | None = None, call_size: int | None = None) -> Solution:
    """Samples shaped like ``template`` (its mask and cond are kept; its field values are ignored), integrated
    from ``x0`` (default: drawn from ``source``). ``model``: the field to integrate, guided already when
    guidance is wanted (:func:`fmkit.flow.guidance.with_guidance`).

    Args:
        model: the network ``model(x_t, t, cond)``.
        path: the state path the model was trained on (its prediction is converted to a velocity).
        source: p_0, drawn from when ``x0`` is not given.
        solver: integrates the velocity from t = 0 to 1.
        template: a batch [B, ...] giving the shapes, mask and cond of the samples.
        trajectory: keep the times and states the solver visits.
        x0: the starting points (a state of the template's fields [B, ...]); None: drawn from ``source``.
        call_size: the most examples per model call (on a CPU: :func:`~fmkit.flow.batching.cpu_call_size`);
            None: the whole batch in one call.

    Returns:
        The solver's :class:`Solution`: samples ``x`` at t = 1 with the template's mask and cond, the
        number of velocity evaluations, and with ``trajectory`` the times and states visited.
    """
    x0 = source.sample(template) if x0 is None else x0
    mask, cond = template.get(MASK), template.get(COND)
    sol = solver.solve(model_velocity(model, path, mask, cond, template.get(MASKS), call_size), fields(x0),
                       trajectory=trajectory)
    sol.x.update(passengers(template))
    return sol
