"""Guidance as a model input: one network for every classifier-free guidance scale, tunable at one step.

MeanFlow folds a fixed scale omega into its training target (Geng et al. 2025, eq. 21), so a one-step
model samples at that scale only. Improved MeanFlow (Geng et al. 2025b, "Improved Mean Flows")
instead draws omega per example while training and gives it to the network, u_theta(z, r, t | c, omega):
the scale is then chosen when sampling, still in one jump. The contract:

- a model meets it when it has ``guidance_input = True`` and its ``forward(x_t, t, cond=None, *, r=None,
  guidance=None)`` takes ``guidance`` [B], the scale omega of each example;
- ``guidance=None`` is omega = 1 (no guidance) and gives exactly the model without the input:
  :class:`GuidanceEmbedding` embeds omega - 1 and is zero at omega = 1.

:func:`~fmkit.flow.guidance.with_guidance` hands such a model the scale (:class:`GuidanceInput`) instead of
the two-branch mix of :class:`~fmkit.flow.guidance.ClassifierFreeGuidance`; ``fmkit.testing.check_two_time_model``
checks the rules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from fmkit.errors import ModelError
from fmkit.flow.state import State
from fmkit.flow.two_times import IntervalEmbedding


class GuidanceEmbedding(IntervalEmbedding):
    """``omega`` [B] -> [B, dim]: an embedding of omega - 1, exactly zero at omega = 1 (so a model given
    no guidance, or omega = 1, is bit for bit the model without the input). ``max_freq`` 4: scales lie in a
    few units, and their features should vary slowly across them."""

    def __init__(self, dim: int, features: int = 64, max_freq: float = 4.0) -> None:
        super().__init__(dim, features=features, max_freq=max_freq)

    def forward(self, omega: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(omega.reshape(-1) - 1.0)


def embed_guidance(embedding: GuidanceEmbedding | None, guidance: Tensor | None, who: str) -> Tensor | None:
    """A model's guidance term [B, dim] to add to its time embedding: None without ``guidance`` (omega = 1);
    a :class:`ModelError` naming ``who`` when guidance is given to a model built without the input."""
    if guidance is None:
        return None
    if embedding is None:
        raise ModelError(f"this {who} was built without the guidance input, and was called with a guidance "
                         "scale (objective.guidance_range trains the scale as an input)", where="model.guidance_input",
                         fix="set `guidance_input: true` in the recipe's model section")
    return embedding(guidance)


def _inner(model: Any) -> Any:
    """The network under the wrappers the engine and the samplers put around it (compile, DDP, the
    MeanFlow JVP module, guidance)."""
    for _ in range(8):
        nxt = next((m for m in (getattr(model, a, None) for a in ("_orig_mod", "module", "model"))
                    if isinstance(m, nn.Module)), None)
        if nxt is None:
            return model
        model = nxt
    return model


def takes_guidance(model: Any) -> bool:
    """Whether ``model`` (or the network under its wrappers) takes the guidance scale as an input."""
    return bool(getattr(model, "guidance_input", False) or getattr(_inner(model), "guidance_input", False))


def require_guidance(model: Any, who: str) -> None:
    """Refuse (a :class:`ModelError`) a model without the guidance input, naming ``who`` needs it."""
    if not takes_guidance(model):
        name = type(_inner(model)).__name__
        raise ModelError(f"{who} gives the model the guidance scale omega as an input, and {name} was built "
                         "without one", where="model",
                         fix="build it with `guidance_input: true` (the built-in mlp, unet, dit and mel_unet take "
                             "it; a plugin's model: docs/plugins.md, 'Guidance as an input')")


class GuidanceInput(nn.Module):
    """The model a sampler integrates when the network takes the scale itself:
    ``forward(x_t, t, cond, **kw) = model(x_t, t, cond, guidance=scale, **kw)``, one call per velocity
    (no unconditional branch). Without a condition the scale is not passed (an unconditional field has
    no guidance)."""

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        self.model, self.scale = model, float(scale)

    def forward(self, x_t: State, t: Tensor, cond: Tensor | None = None, **kw: Any) -> State:
        if cond is None:
            return self.model(x_t, t, None, **kw)
        omega = torch.full((cond.shape[0],), self.scale, dtype=torch.float32, device=cond.device)
        return self.model(x_t, t, cond, guidance=omega, **kw)
