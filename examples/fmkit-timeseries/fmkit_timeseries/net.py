"""A 1-D residual convolutional velocity network for series ``[B, 1, T]``."""

import math

import torch
from fmkit.plugin import DataInfo
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class ConvNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: int = Field(32, ge=1)
    blocks: int = Field(3, ge=1)
    kernel: int = Field(5, ge=1, description="odd kernel size (circular padding keeps the length)")


class Block(nn.Module):
    def __init__(self, c: int, k: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(1, c)
        self.conv1 = nn.Conv1d(c, c, k, padding=k // 2, padding_mode="circular")
        self.conv2 = nn.Conv1d(c, c, k, padding=k // 2, padding_mode="circular")
        self.emb = nn.Linear(c, c)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        y = self.conv1(torch.nn.functional.silu(self.norm(h))) + self.emb(e)[:, :, None]
        return h + self.conv2(torch.nn.functional.silu(y))


class ConvNet1d(nn.Module):
    """v(x_t, t, label): sinusoidal time embedding plus a class embedding (index K: the null class
    of classifier-free guidance), added in every residual conv block."""

    def __init__(self, channels: int = 32, blocks: int = 3, kernel: int = 5, num_classes: int | None = None) -> None:
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"kernel must be odd to keep the length, got {kernel}")
        self.channels, self.num_classes = channels, num_classes
        self.inp = nn.Conv1d(1, channels, kernel, padding=kernel // 2, padding_mode="circular")
        self.time = nn.Sequential(nn.Linear(channels, channels), nn.SiLU(), nn.Linear(channels, channels))
        self.label = nn.Embedding(num_classes + 1, channels) if num_classes else None
        self.blocks = nn.ModuleList(Block(channels, kernel) for _ in range(blocks))
        self.out = nn.Conv1d(channels, 1, 1)

    @classmethod
    def from_data(cls, data_info: DataInfo, channels: int = 32, blocks: int = 3, kernel: int = 5) -> "ConvNet1d":
        return cls(channels, blocks, kernel, data_info.num_cond_classes)

    def _time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.channels // 2
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=t.device) / max(half, 1))
        arg = t[:, None].float() * 1000.0 * freqs[None]
        emb = torch.cat([torch.sin(arg), torch.cos(arg)], 1)
        return torch.nn.functional.pad(emb, (0, self.channels - emb.shape[1]))

    def forward(self, x_t: dict, t: torch.Tensor, cond: torch.Tensor | None = None) -> dict:
        x = x_t["x"]
        e = self.time(self._time_embedding(t).to(x.dtype))
        if self.label is not None:
            c = cond if cond is not None else torch.full((x.shape[0],), self.num_classes, device=x.device)
            e = e + self.label(c.long()).to(x.dtype)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, e)
        return {"x": self.out(h)}
