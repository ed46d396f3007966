"""PNG grids of image samples (torchvision make_grid/save_image), one row per class."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field


class GridOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_row: int = Field(10, ge=1, description="images per row (per class for conditional samples)")
    max_rows: int = Field(10, ge=1, description="rows at most (unconditional samples)")


class GridWriter:
    """``samples_step{step}.png``: for conditional samples row k holds samples of class k (sorted by label)."""

    def __init__(self, per_row: int = 10, max_rows: int = 10, data_info=None) -> None:
        self.per_row, self.max_rows = per_row, max_rows

    def arrange(self, samples) -> torch.Tensor:
        x = samples["x"].detach().float().cpu()
        if "cond" not in samples:
            return x[: self.per_row * self.max_rows]
        cond = samples["cond"].cpu()
        rows = []
        for k in sorted(set(cond.tolist())):
            r = x[cond == k][: self.per_row]
            if len(r) < self.per_row:  # blank the rest of a short row
                r = torch.cat([r, torch.full((self.per_row - len(r), *x.shape[1:]), -1.0)])
            rows.append(r)
        return torch.cat(rows)

    def __call__(self, samples, out_dir: Path, dataset, step: int) -> list[Path]:
        from torchvision.utils import make_grid, save_image

        grid = make_grid(self.arrange(samples), nrow=self.per_row, normalize=True, value_range=(-1, 1), padding=2)
        p = Path(out_dir) / f"samples_step{step:07d}.png"
        save_image(grid, str(p))
        return [p]
