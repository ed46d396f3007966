"""Image sample writers: a PNG grid (one row per class) and the samples as 8-bit images in safetensors, both
clamped and quantised to the data's 256 levels of [-1, 1] (the solver's raw values overshoot that range)."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from fmkit_image.data import ImageDataset


class GridOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_row: int = Field(10, ge=1, description="images per row (per class for conditional samples)")
    max_rows: int = Field(10, ge=1, description="rows at most (unconditional samples)")


class GridWriter:
    """``samples_step{step}.png``: for conditional samples row k holds the first ``per_row`` samples of the
    k-th class present (classes in order); pixels clamped and quantised as :meth:`ImageDataset.quantise`."""

    def __init__(self, per_row: int = 10, max_rows: int = 10, data_info=None) -> None:
        self.per_row, self.max_rows = per_row, max_rows

    def arrange(self, samples) -> torch.Tensor:
        """The grid's images, uint8 [rows * per_row, C, H, W] (a short class row padded with black)."""
        x = ImageDataset.quantise(samples["x"].cpu())
        if "cond" not in samples:
            return x[: self.per_row * self.max_rows]
        cond = samples["cond"].cpu()
        rows = []
        for k in sorted(set(cond.tolist())):
            r = x[cond == k][: self.per_row]
            rows += [r, torch.zeros((self.per_row - len(r), *x.shape[1:]), dtype=x.dtype)]
        return torch.cat(rows)

    def __call__(self, samples, out_dir: Path, dataset, step: int) -> list[Path]:
        from PIL import Image
        from torchvision.utils import make_grid

        grid = make_grid(self.arrange(samples), nrow=self.per_row, padding=2)  # uint8 [3, H', W']
        p = Path(out_dir) / f"samples_step{step:07d}.png"
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(p)
        return [p]


class ImageSamplesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    raw: bool = Field(False, description="keep the solver's float values (unclamped) instead of 8-bit images")


class ImageSamplesWriter:
    """``images_step{step}.safetensors``: ``images`` uint8 [N, C, H, W] (clamped to [-1, 1] and quantised,
    the data's own 256 levels), or with ``raw`` the solver's float32 values ``x``; ``cond`` [N] for
    conditional samples, in the samples' order."""

    def __init__(self, raw: bool = False, data_info=None) -> None:
        self.raw = raw

    def __call__(self, samples, out_dir: Path, dataset, step: int) -> list[Path]:
        from safetensors.torch import save_file

        x = samples["x"].cpu()
        t = {"x": x.float().contiguous()} if self.raw else {"images": ImageDataset.quantise(x).contiguous()}
        if "cond" in samples:
            t["cond"] = samples["cond"].cpu().long().contiguous()
        p = Path(out_dir) / f"images_step{step:07d}.safetensors"
        save_file(t, str(p), metadata={"values": "raw solver output" if self.raw else "uint8 levels of [-1, 1]"})
        return [p]
