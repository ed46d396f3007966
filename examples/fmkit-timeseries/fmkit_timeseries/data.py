"""Sine waves as a time-series dataset: examples ``{"x": [1, T], "cond": []}``.

Each series is ``a sin(2 pi f s / T + phi) + noise`` over ``s = 0..T-1`` with an integer frequency
``f`` in ``1..K`` (cycles per window; the label is ``f - 1``), phase ``phi`` uniform, amplitude ``a``
uniform in [0.5, 1].
"""

import math

import torch
from fmkit.plugin import DataInfo, Dataset, FieldInfo
from pydantic import BaseModel, ConfigDict, Field


class SineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(8192, ge=1, description="number of series")
    length: int = Field(64, ge=8, description="samples per series (T)")
    frequencies: int = Field(8, ge=1, description="frequencies 1..K cycles per window, also the classes")
    noise: float = Field(0.02, ge=0, description="Gaussian noise std")
    seed: int = 0


class SineWaves(Dataset):
    """Noisy sine waves of K integer frequencies, labelled by frequency (for conditioning)."""

    def __init__(self, n: int = 8192, length: int = 64, frequencies: int = 8, noise: float = 0.02,
                 seed: int = 0) -> None:
        if frequencies >= length // 2:
            raise ValueError(f"frequencies ({frequencies}) must stay below the Nyquist limit length // 2 "
                             f"({length // 2})")
        g = torch.Generator().manual_seed(seed)
        self.label = torch.randint(0, frequencies, (n,), generator=g)
        phase = torch.rand(n, 1, generator=g) * 2 * math.pi
        amp = 0.5 + 0.5 * torch.rand(n, 1, generator=g)
        s = torch.arange(length, dtype=torch.float32)
        x = amp * torch.sin(2 * math.pi * (self.label[:, None] + 1).float() * s / length + phase)
        self.x = (x + noise * torch.randn(n, length, generator=g)).unsqueeze(1)
        self.info = DataInfo({"x": FieldInfo((1, length))}, num_cond_classes=frequencies,
                             meta={"length": length})

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "cond": self.label[i]}
