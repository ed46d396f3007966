"""A residual MLP velocity model for fixed-size data."""

import torch
from fmkit.plugin import DataInfo
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class ResNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden: int = Field(64, ge=1)
    blocks: int = Field(2, ge=1)


class ResNet(nn.Module):
    """v(x_t, t) = out(h), h = in([x_t, t]) + sum of residual blocks."""

    def __init__(self, dim: int, hidden: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(dim + 1, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(blocks))
        self.out = nn.Linear(hidden, dim)

    @classmethod
    def from_data(cls, data_info: DataInfo, hidden: int = 64, blocks: int = 2) -> "ResNet":
        return cls(data_info.dim("x"), hidden, blocks)

    def forward(self, x_t: dict, t: torch.Tensor, cond: torch.Tensor | None = None) -> dict:
        x = x_t["x"]
        h = self.inp(torch.cat([x, t[:, None].to(x.dtype)], 1))
        for block in self.blocks:
            h = h + block(h)
        return {"x": self.out(h)}
