"""A 2-D spiral, as a dataset: examples {"x": [2]}."""

import math

import torch
from fmkit.plugin import DataInfo, Dataset, FieldInfo
from pydantic import BaseModel, ConfigDict, Field


class SpiralOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(4096, ge=1, description="number of points")
    noise: float = Field(0.05, ge=0, description="Gaussian noise std")
    seed: int = 0


class SpiralDataset(Dataset):
    """Points on the spiral r = theta / (3 pi), theta in [0, 3 pi], plus Gaussian noise."""

    def __init__(self, n: int = 4096, noise: float = 0.05, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        theta = torch.rand(n, generator=g) * 3 * math.pi
        r = theta / (3 * math.pi)
        x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1) * 2
        self.x = x + noise * torch.randn(n, 2, generator=g)
        self.info = DataInfo({"x": FieldInfo((2,))})

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i]}
