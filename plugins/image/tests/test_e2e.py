"""CPU end to end on a small MNIST subset: the classifier is trained, ``fmkit`` trains the CPU recipe's U-Net
(narrowed), the evaluation writes a PNG grid and the classifier metrics, and test bits/dim comes out finite.

Real MNIST when ``$FMKIT_DATA_DIR/mnist`` holds it (``test_real_mnist_end_to_end``: the judge on 2000 real
digits, the U-Net on 300 for 6 steps); otherwise the same path on generated IDX files
(``test_generated_mnist_end_to_end``), so the suite costs one run either way. No CIFAR-10 files are needed anywhere."""

from __future__ import annotations

import math

import pytest
from fmkit.plugin import FixedStepSolver, load_recipe
from fmkit.testing import build_trainer
from image_testlib import real_mnist, write_idx
from PIL import Image
from typer.testing import CliRunner


def _end_to_end(root, tmp_path, judge_images: int = 300, judge_epochs: int = 3) -> dict:
    from fmkit_image.cli import app as image_app

    res = CliRunner().invoke(image_app, ["train-classifier", "--dataset", "mnist", "--root", str(root),
                                         "--limit", str(judge_images), "--epochs", str(judge_epochs)])
    assert res.exit_code == 0, res.output
    acc = float(res.output.split("test accuracy:")[1].split()[0])

    over = [f"data.root={root}", "data.limit=300", "data.test_limit=100", "trainer.steps=6", "trainer.batch_size=32",
            "trainer.progress=false", "model.channels=16", "model.attention_resolutions=[]", "eval.num_samples=20",
            "eval.batch_size=20", "solver.steps=2",
            "eval.metrics=[{name: image_classifier}]"]  # the recipe's own writers: the grid and 8-bit samples
    rec = load_recipe(_recipe(), over)
    tr = build_trainer(rec, tmp_path / "run")
    tr.fit()
    out = tr.evaluate()
    assert {"class_acc", "cfd", "cfd_floor"} <= set(out)
    assert 0.0 <= out["class_acc"] <= 1.0 and out["cfd_floor"] >= 0 and math.isfinite(out["cfd"])
    grids = list((tmp_path / "run" / "samples").glob("*.png"))
    assert grids and list((tmp_path / "run" / "samples").glob("*.safetensors"))
    with Image.open(grids[0]) as im:  # 10 images a row, one row per class drawn (30 px a cell with padding)
        assert im.width == 10 * 30 + 2 and im.height >= 30
    assert list((tmp_path / "run" / "samples").glob("images_step*.safetensors"))
    _sample_per_class(rec, tmp_path / "run")

    from fmkit.plugin import model_velocity
    from fmkit_image.likelihood import bits_per_dim

    imgs, _ = tr.dataset.split("test")
    b = bits_per_dim(model_velocity(tr.ema.model, tr.path, None, None), imgs[:8], tr.source,
                     FixedStepSolver("euler", 2), draws=1)
    assert b.nfe == 2 and b.per_image.shape == (8,)
    # a barely trained flow is close to the identity: N(0, I) on [-1, 1] pixels gives ~9 bits/dim
    assert math.isfinite(b.bits_per_dim) and 1.0 < b.bits_per_dim < 12.0, b.bits_per_dim
    return {"classifier_acc": acc, "bpd": b.bits_per_dim, **out}


def _sample_per_class(rec, run):
    """`fmkit sample RUN --per-class 2` (a real process): a grid of one row per class, 8-bit samples in class order."""
    import os
    import subprocess
    import sys

    import torch
    from safetensors.torch import load_file

    (run / "recipe.yaml").write_text(rec.to_yaml())  # what `fmkit train` writes (the test trained in-process)
    r = subprocess.run([sys.executable, "-m", "fmkit", "sample", str(run), "--per-class", "2", "--steps", "1",
                        "--out", "pc"], capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = run / "samples" / "pc"
    with Image.open(next(out.glob("samples_step*.png"))) as im:
        assert (im.width, im.height) == (10 * 30 + 2, 10 * 30 + 2)  # 10 classes: 10 rows (2 samples, 8 black)
    saved = load_file(str(next(out.glob("images_step*.safetensors"))))
    assert saved["images"].dtype == torch.uint8 and saved["images"].shape == (20, 1, 28, 28)
    assert saved["cond"].tolist() == [c for c in range(10) for _ in range(2)]


def test_real_mnist_end_to_end(tmp_path):
    root = real_mnist()
    if root is None:
        pytest.skip("real MNIST not found: set FMKIT_DATA_DIR to a folder holding mnist/ (the IDX .gz files) "
                    "to run this; test_generated_mnist_end_to_end ran the same path on generated digits")
    out = _end_to_end(root, tmp_path, judge_images=2000, judge_epochs=2)
    assert out["classifier_acc"] > 0.5, out  # 2000 real digits, 2 epochs (30 steps): 0.72, far above chance
    assert out["cfd_floor"] < out["cfd"], out  # 6 steps of training are far from the real test-vs-train floor


def test_generated_mnist_end_to_end(tmp_path):
    if real_mnist() is not None:
        pytest.skip("real MNIST present: test_real_mnist_end_to_end ran this path on it")
    root = tmp_path / "mnist"
    write_idx(root)
    _end_to_end(root, tmp_path)


def _recipe():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "fmkit_image" / "recipes" / "images_mnist_cpu.yaml"
