"""EGNN velocity model (Satorras et al. 2021, "E(n) Equivariant Graph Neural Networks"; EDM's variant
with normalised coordinate differences and tanh-bounded coordinate updates).

m_ij = phi_e(h_i, h_j, |x_i - x_j|^2, |x_i^0 - x_j^0|^2);  h_i += phi_h(h_i, mean_j m_ij);
x_i += mean_j (x_i - x_j) / (|x_i - x_j| + 1) * tanh(phi_x(m_ij)) * coords_range / layers.
The position output is the CoM-free displacement x_L - x_0 (a velocity), or x_L itself when the
recipe's path predicts x1; type outputs are a linear map of h.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from fmkit_molecules.models.common import (
    AtomEmbedding,
    TimeEmbedding,
    atom_spec,
    edge_mask,
    node_mask,
    outputs,
    predicts_x1,
)


class EGNNOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(128, ge=1)
    layers: int = Field(6, ge=1)
    coords_range: float = Field(15.0, gt=0.0, description="bound of all layers' coordinate steps together (Angstrom)")
    atom_encoding: Literal["categorical", "onehot"] | None = None
    num_classes: int | None = Field(None, ge=1)


class _EGCL(nn.Module):
    def __init__(self, hidden: int, coords_range: float) -> None:
        super().__init__()
        act = nn.SiLU()
        self.phi_e = nn.Sequential(nn.Linear(2 * hidden + 2, hidden), act, nn.Linear(hidden, hidden), act)
        self.phi_h = nn.Sequential(nn.Linear(2 * hidden, hidden), act, nn.Linear(hidden, hidden))
        last = nn.Linear(hidden, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)
        self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), act, last)
        self.coords_range = coords_range

    def forward(self, h: Tensor, x: Tensor, d0: Tensor, emask: Tensor, inv_deg: Tensor) -> tuple[Tensor, Tensor]:
        b, n, f = h.shape
        diff = x[:, :, None, :] - x[:, None, :, :]
        d2 = diff.pow(2).sum(-1, keepdim=True)
        e_in = torch.cat([h[:, :, None, :].expand(b, n, n, f), h[:, None, :, :].expand(b, n, n, f), d2, d0], -1)
        m = self.phi_e(e_in)
        em = emask[..., None].to(h.dtype)
        m = m * em
        h = h + self.phi_h(torch.cat([h, m.sum(2) * inv_deg[..., None]], -1))
        unit = diff / (torch.sqrt(d2 + 1e-8) + 1.0)
        step = unit * torch.tanh(self.phi_x(m)) * self.coords_range * em
        x = x + step.sum(2) * inv_deg[..., None]
        return h, x


class EGNN(nn.Module):
    """E(3)-equivariant EGNN: ``forward({"pos","atoms","mask"}, t) -> {"pos", "atoms"}`` (see module doc).

    Args:
        hidden: node feature width.
        layers: number of EGNN layers.
        coords_range: bound of all layers' coordinate steps together (Angstrom).
        atom_encoding: "categorical" or "onehot", only when no dataset is at hand (else from ``data_info``).
        num_classes: atom classes K, only when no dataset is at hand.
        data_info: the dataset's description (build context): atom encoding and class counts.
        predictions: the path's target per field (build context): ``pos: x1`` makes the model output x1.
    """

    def __init__(self, hidden: int = 128, layers: int = 6, coords_range: float = 15.0,
                 atom_encoding: str | None = None, num_classes: int | None = None, data_info=None,
                 predictions: dict[str, str] | None = None) -> None:
        super().__init__()
        self.encoding, self.num_classes = atom_spec(data_info, atom_encoding, num_classes)
        self.predicts_x1 = predicts_x1(predictions)
        self.embed = AtomEmbedding(self.encoding, self.num_classes, hidden)
        self.time = TimeEmbedding(hidden)
        self.layers = nn.ModuleList(_EGCL(hidden, coords_range / layers) for _ in range(layers))
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, self.num_classes))

    def forward(self, x_t: dict, t: Tensor, cond: Tensor | None = None) -> dict[str, Tensor]:
        pos = x_t["pos"]
        mask = node_mask(x_t, pos)
        b = pos.shape[0]
        t = (t.expand(b) if t.dim() == 0 else t).to(pos.dtype).reshape(b)
        emask = edge_mask(mask)
        inv_deg = 1.0 / emask.sum(-1).clamp_min(1).to(pos.dtype)
        m = mask[..., None].to(pos.dtype)
        x = pos * m
        d0 = (x[:, :, None, :] - x[:, None, :, :]).pow(2).sum(-1, keepdim=True)
        h = (self.embed(x_t["atoms"]) + self.time(t)[:, None, :]) * m
        for layer in self.layers:
            h, x = layer(h, x, d0, emask, inv_deg)
            h, x = h * m, x * m
        return outputs(x if self.predicts_x1 else x - pos * m, self.head(h), mask)
