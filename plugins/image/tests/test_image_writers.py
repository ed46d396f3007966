"""The image writers write what a user can look at: a PNG grid with one row per class (classes in order,
whatever the samples' order) and the samples as 8-bit images, both clamped to the data's [-1, 1] and
quantised to its 256 levels (the solver's raw values overshoot); raw floats only with ``raw: true``."""

from __future__ import annotations

import numpy as np
import torch
from fmkit_image.data import ImageDataset
from fmkit_image.writers import GridWriter, ImageSamplesWriter
from PIL import Image
from safetensors import safe_open

#: the value every pixel of a class's samples holds: beyond the range below and above, and inside it
LEVEL = {0: -3.0, 1: 0.0, 2: 5.0, 3: 0.5}


def class_samples(per_class: int = 3) -> dict[str, torch.Tensor]:
    """Samples of classes 0..3 in a shuffled order; class k's pixels all hold LEVEL[k]."""
    cond = torch.arange(4).repeat_interleave(per_class)[torch.randperm(4 * per_class, generator=torch.Generator()
                                                                            .manual_seed(0))]
    x = torch.stack([torch.full((1, 28, 28), LEVEL[int(c)]) for c in cond])
    return {"x": x, "cond": cond}


def test_quantise_inverts_the_data_scaling_and_clamps():
    u8 = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(ImageDataset.quantise(ImageDataset.scale(u8)), u8)  # every level back to itself
    assert ImageDataset.quantise(torch.tensor([-7.0, -1.0, 1.0, 9.0])).tolist() == [0, 0, 255, 255]


def test_grid_has_one_row_per_class_in_order_with_clamped_pixels(tmp_path):
    (png,) = GridWriter(per_row=5)(class_samples(per_class=3), tmp_path, None, step=42)
    assert png.name == "samples_step0000042.png"
    with Image.open(png) as im:
        grid = np.asarray(im)[..., 0]  # grey images: three equal channels
    cell = 28 + 2
    assert grid.shape == (4 * cell + 2, 5 * cell + 2)  # 4 classes = 4 rows of 5 cells
    for k, level in LEVEL.items():
        want = int(ImageDataset.quantise(torch.tensor(level)))
        row = grid[2 + k * cell: 2 + k * cell + 28]
        for j in range(5):
            tile = row[:, 2 + j * cell: 2 + j * cell + 28]
            assert (tile == (want if j < 3 else 0)).all(), (k, j)  # 3 samples, then black
    assert [int(ImageDataset.quantise(torch.tensor(v))) for v in LEVEL.values()] == [0, 128, 255, 192]


def test_unconditional_grid_is_capped_at_max_rows(tmp_path):
    x = torch.rand(50, 3, 8, 8) * 4 - 2
    (png,) = GridWriter(per_row=4, max_rows=3)({"x": x}, tmp_path, None, step=0)
    with Image.open(png) as im:
        assert (im.width, im.height) == (4 * 10 + 2, 3 * 10 + 2)
        assert np.array_equal(np.asarray(im)[2:10, 2:10], ImageDataset.quantise(x[0]).permute(1, 2, 0).numpy())


def test_image_samples_are_uint8_levels_unless_raw(tmp_path):
    s = class_samples(per_class=2)
    (p,) = ImageSamplesWriter()(s, tmp_path, None, step=7)
    assert p.name == "images_step0000007.safetensors"
    with safe_open(str(p), "pt") as f:
        images, cond, meta, keys = f.get_tensor("images"), f.get_tensor("cond"), f.metadata(), set(f.keys())
    assert images.dtype == torch.uint8 and images.shape == (8, 1, 28, 28) and keys == {"images", "cond"}
    assert torch.equal(images, ImageDataset.quantise(s["x"])) and torch.equal(cond, s["cond"])
    assert meta["values"] == "uint8 levels of [-1, 1]"
    (raw,) = ImageSamplesWriter(raw=True)(s, tmp_path, None, step=8)
    with safe_open(str(raw), "pt") as f:
        x = f.get_tensor("x")
    assert x.dtype == torch.float32 and torch.equal(x, s["x"]) and x.max() == 5.0 and x.min() == -3.0
