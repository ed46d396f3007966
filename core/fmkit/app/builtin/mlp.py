"""MLP velocity model for flat fields (the 2-D toy modality and other small vectors)."""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from fmkit.errors import ModelError
from fmkit.flow.data import DataInfo
from fmkit.flow.state import State
from fmkit.flow.guidance_input import GuidanceEmbedding, embed_guidance
from fmkit.flow.two_times import IntervalEmbedding


class SinusoidalTimeEmbedding(nn.Module):
    """t in [0, 1] -> [sin(w_k t), cos(w_k t)], w_k geometric from 1 to ``max_freq`` rad per unit
    time (Vaswani et al. 2017 features; a moderate top frequency keeps v smooth in t)."""

    def __init__(self, dim: int, max_freq: float = 200.0) -> None:
        super().__init__()
        half = dim // 2
        freqs = torch.exp(torch.linspace(0.0, math.log(max_freq), max(half, 1)))[:half]
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        a = t.to(self.freqs.dtype)[:, None] * self.freqs[None]  # float32 unless the module is made double
        emb = torch.cat([torch.sin(a), torch.cos(a)], dim=-1)
        if self.dim % 2:
            emb = torch.nn.functional.pad(emb, (0, 1))
        return emb


#: the top time frequency of a two-time MLP: MeanFlow's gradient step moves u along t at a speed
#: proportional to (r - t), and a time feature of frequency w makes a discrete step unstable past a
#: learning rate of about 2 / (w (r - t))^2 (measured on Gaussian -> Gaussian: 200 diverged, 20 trained)
TWO_TIME_MAX_FREQ = 20.0


class MLPOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(256, ge=1, description="width of hidden layers")
    depth: int = Field(3, ge=1, description="number of hidden layers")
    time_dim: int = Field(64, ge=2, description="size of the sinusoidal time embedding")
    field: str = Field("x", description="the state field to model")
    two_times: bool = Field(False, description="also take the other time r: u(x, r, t), the average velocity "
                            "(objective: meanflow); an embedding of r - t, zero at r = t, joins the time embedding")
    time_max_freq: float | None = Field(None, gt=0.0, description="top frequency (radians per unit time) of the "
                                        "time features; null: 200, or 20 with two_times (MeanFlow's target holds "
                                        "d/dt of the network: high time frequencies make its training unstable)")
    guidance_input: bool = Field(False, description="also take the guidance scale omega (objective meanflow with "
                                 "guidance_range): an embedding of omega - 1, zero at omega = 1, joins the time "
                                 "embedding")


class MLP(nn.Module):
    """v(x_t, t, c) for a flat field: [x_t, emb(t) (+ emb(c))] -> SiLU MLP -> velocity.

    With ``num_classes`` set, a class embedding with one extra *null* class (index ``num_classes``)
    is added, which classifier-free guidance uses for the unconditional branch. With
    ``residual=True`` (what a path predicting x1 asks for) the output is x_t + MLP(...): near t = 1,
    x1 = x_t up to a small correction, which a plain MLP reproduces only to its fitting error, and
    an x1-predicting sampler lands on that error (samples come out blurred onto a smoothed manifold).
    With ``two_times=True`` it is u(x_t, r, t) (``forward(..., r=r)``; :mod:`fmkit.flow.two_times`):
    an :class:`IntervalEmbedding` of r - t, zero at r = t, is added to emb(t), both of frequencies up to
    ``time_max_freq`` (default 20, not 200: see TWO_TIME_MAX_FREQ).

    Args:
        dim: flat size of the field (the product of its shape); the field [B, ...] enters as [B, dim].
        hidden: width of each hidden layer.
        depth: number of hidden layers.
        time_dim: size of the time embedding; the class and interval embeddings, added to it, share it.
        num_classes: K condition classes (K + 1 embedding rows, row K the null class); None: unconditional.
        field: the state field modelled; the output holds only that field.
        residual: return x_t + MLP(...), for a path that predicts x1 (see above).
        two_times: also take the other time ``r``, for the average velocity u(x_t, r, t).
        time_max_freq: top frequency (radians per unit time) of the time features; None: 200, or 20 with
            ``two_times``.
        guidance_input: also take the guidance scale omega (``forward(..., guidance=omega)``;
            :mod:`fmkit.flow.guidance_input`).
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, time_dim: int = 64,
                 num_classes: int | None = None, field: str = "x", residual: bool = False,
                 two_times: bool = False, time_max_freq: float | None = None, guidance_input: bool = False) -> None:
        super().__init__()
        self.guidance_input = bool(guidance_input)
        self.guidance = GuidanceEmbedding(time_dim) if guidance_input else None
        self.field, self.num_classes, self.residual = field, num_classes, residual
        top = time_max_freq if time_max_freq is not None else (TWO_TIME_MAX_FREQ if two_times else 200.0)
        self.time = SinusoidalTimeEmbedding(time_dim, top)
        self.interval = IntervalEmbedding(time_dim, max_freq=top) if two_times else None
        self.cond = nn.Embedding(num_classes + 1, time_dim) if num_classes else None
        layers: list[nn.Module] = [nn.Linear(dim + time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_data(cls, data_info: DataInfo, hidden: int = 256, depth: int = 3, time_dim: int = 64,
                  field: str = "x", two_times: bool = False, time_max_freq: float | None = None,
                  guidance_input: bool = False, predictions: dict[str, str] | None = None) -> MLP:
        """Registry factory: the input size and classes come from the dataset; residual when the
        recipe's path predicts x1 for the field.

        Args:
            data_info: the dataset's description: ``field``'s shape gives the input size, its condition
                classes the class embedding (none: unconditional).
            hidden: width of each hidden layer.
            depth: number of hidden layers.
            time_dim: size of the time embedding.
            field: the state field modelled.
            two_times: also take the other time ``r`` (objective meanflow).
            time_max_freq: top frequency (radians per unit time) of the time features; None: the default.
            guidance_input: also take the guidance scale omega (objective meanflow's guidance_range).
            predictions: the recipe path's prediction per field (``{"x": "x1"}``); None: velocity everywhere.

        Returns:
            The MLP for ``field`` of this dataset.
        """
        return cls(data_info.dim(field), hidden, depth, time_dim, data_info.num_cond_classes, field,
                   residual=(predictions or {}).get(field) == "x1", two_times=two_times, time_max_freq=time_max_freq,
                   guidance_input=guidance_input)

    def forward(self, x_t: State, t: Tensor, cond: Tensor | None = None, *, r: Tensor | None = None,
                guidance: Tensor | None = None) -> State:
        x = x_t[self.field]
        shape = x.shape
        h = self.time(t).to(x.dtype)
        if r is not None:
            if self.interval is None:
                raise ModelError("this MLP was built for one time (flow matching), and was called with a second "
                                 "time r (the average velocity u(x, r, t) of MeanFlow)", where="model.two_times",
                                 fix="build it with two_times=True (`model: {name: mlp, two_times: true}`)")
            h = h + self.interval(r - t).to(x.dtype)
        g = embed_guidance(self.guidance, guidance, "MLP")
        if g is not None:
            h = h + g.to(x.dtype)
        if self.cond is not None:
            c = cond if cond is not None else torch.full((shape[0],), self.num_classes, device=x.device)
            h = h + self.cond(c.long()).to(x.dtype)
        out = self.net(torch.cat([x.reshape(shape[0], -1), h], dim=-1)).reshape(shape)
        return {self.field: x + out if self.residual else out}
