"""CPU end to end on a small MNIST subset (the real files when FMKIT_DATA_DIR holds them, else IDX files
written here): fmkit train writes a PNG grid and classifier metrics, and bits/dim comes out finite."""

from __future__ import annotations

import gzip
import struct

import fmkit
import numpy as np
from image_testlib import real_mnist
from typer.testing import CliRunner


def _write_idx(folder, n_train=300, n_test=100):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def images(n, labels):
        x = np.zeros((n, 28, 28), np.uint8)
        for i, y in enumerate(labels):  # a bar whose position is the label: learnable, like a digit
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


def test_mnist_end_to_end(tmp_path, monkeypatch):
    root = real_mnist()
    if root is None:
        root = tmp_path / "mnist"
        _write_idx(root)
    from fmkit_image.cli import app as image_app

    res = CliRunner().invoke(image_app, ["train-classifier", "--dataset", "mnist", "--root", str(root),
                                         "--limit", "300", "--epochs", "3"])
    assert res.exit_code == 0, res.output
    assert "test accuracy" in res.output

    from fmkit.app.run import build_trainer

    over = [f"data.root={root}", "data.limit=300", "data.test_limit=100", "trainer.steps=6", "trainer.batch_size=32",
            "trainer.progress=false", "model.channels=16", "model.attention_resolutions=[]", "eval.num_samples=20",
            "eval.batch_size=20", "solver.steps=2",
            "eval.metrics=[{name: image_classifier}]", "eval.writers=[{name: image_grid}]"]
    rec = fmkit.load_recipe(_recipe(), over)
    tr = build_trainer(rec, tmp_path / "run")
    tr.fit()
    out = tr.evaluate()
    assert {"class_acc", "cfd", "cfd_floor"} <= set(out)
    assert 0.0 <= out["class_acc"] <= 1.0 and out["cfd_floor"] >= 0
    assert list((tmp_path / "run" / "samples").glob("*.png"))
    assert list((tmp_path / "run" / "samples").glob("*.safetensors"))

    from fmkit.flow.sampling import model_velocity
    from fmkit_image.likelihood import bits_per_dim

    imgs, _ = tr.dataset.split("test")
    b = bits_per_dim(model_velocity(tr.ema.model, tr.path, None, None), imgs[:4], tr.source,
                     fmkit.FixedStepSolver("euler", 2), draws=1)
    assert np.isfinite(b.bits_per_dim) and b.nfe == 2


def _recipe():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "fmkit_image" / "recipes" / "images_mnist_cpu.yaml"
