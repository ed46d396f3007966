"""Helpers of the image plugin's tests (a module of its own: ``from conftest import ...`` would get
whichever plugin's conftest pytest loaded last when the root runs every plugin's tests)."""

import os
from pathlib import Path


def real_mnist() -> Path | None:
    d = os.environ.get("FMKIT_DATA_DIR")
    p = Path(d) / "mnist" if d else None
    return p if p is not None and p.is_dir() else None


def write_idx(folder: Path, n_train: int = 300, n_test: int = 100) -> None:
    """MNIST-format IDX files of generated 'digits' (a bar whose position is the label: learnable)."""
    import gzip
    import struct

    import numpy as np

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def images(n, labels):
        x = np.zeros((n, 28, 28), np.uint8)
        for i, y in enumerate(labels):
            x[i, 4:24, 2 + 2 * y: 4 + 2 * y] = 200 + rng.integers(0, 55)
        return x

    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = images(n, y)
        name = "train-images-idx3-ubyte-recon.gz" if prefix == "train" else "t10k-images-idx3-ubyte.gz"
        with gzip.open(folder / name, "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + x.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + y.tobytes())


def wake_zero_init(m) -> None:
    """Give a model's zero-initialised parameters random weights (the U-Net's last convs, attention projections
    and head; the DiT's adaLN-Zero modulations and head): at init they make every block an identity and hide the
    condition's effect on the output."""
    import torch

    with torch.no_grad():
        for p in m.parameters():
            if not p.any():
                torch.nn.init.normal_(p, std=0.05)
