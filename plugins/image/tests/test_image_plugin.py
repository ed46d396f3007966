"""Registration, strict options, shipped recipes identical to the repo copies, CIFAR-10 without files."""

from __future__ import annotations

import filecmp
from pathlib import Path

import fmkit_image.plugin as plugin
import pytest
import torch
from fmkit.plugin import DataError, load_recipe
from fmkit.testing import Trainer, TrainerOptions, fresh_registry

REPO = Path(__file__).resolve().parents[3]
RECIPES = {"images_mnist": "unet", "images_mnist_cpu": "unet", "images_cifar10": "unet", "images_mnist_dit_cpu": "dit",
           "images_mnist_meanflow_cpu": "unet"}


@pytest.fixture()
def reg():
    return fresh_registry(plugin)


def test_everything_registered_with_strict_options(reg):
    expected = {"datasets": {"mnist", "fashion_mnist", "cifar10", "image_folder"}, "models": {"unet", "dit"},
                "metrics": {"image_classifier"}, "writers": {"image_grid", "image_samples"}}
    for kind, names in expected.items():
        entries = reg.entries(kind)
        assert names <= set(entries), kind
        for n in names:
            assert entries[n].options.model_config.get("extra") == "forbid", (kind, n)


def test_recipes_shipped_and_identical_to_repo_copies(reg):
    shipped = reg.recipes()
    assert set(RECIPES) <= set(shipped)
    for name in RECIPES:
        assert filecmp.cmp(shipped[name][0], REPO / "recipes" / f"{name}.yaml", shallow=False), name


@pytest.mark.parametrize("name, model", RECIPES.items())
def test_recipes_validate(reg, name, model):
    path = reg.recipes()[name][0]
    rec = load_recipe(path, registry=reg)
    assert rec.model.name == model
    # `fmkit sample` and the evaluation write what the README promises: the grid and 8-bit samples
    assert [w.name for w in rec.eval.writers] == ["image_grid", "image_samples"]


def test_cifar10_missing_files_is_a_data_error(tmp_path):
    from fmkit_image.data import build_cifar10

    with pytest.raises(DataError) as e:
        build_cifar10(root=str(tmp_path))
    assert "download" in e.value.fix


def test_cifar_shaped_generated_images_train(tmp_path):
    """CIFAR-10's shape (3x32x32, flips, 10 classes) through the U-Net and the Trainer, no CIFAR files."""
    from fmkit_image.data import ImageDataset
    from fmkit_image.unet import UNet

    g = torch.Generator().manual_seed(0)
    ds = ImageDataset(torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (64,), generator=g), hflip=True, name="cifar10")
    assert len(ds) == 128
    b = ds.get_batch([0, 64])
    torch.testing.assert_close(b["x"][1], b["x"][0].flip(-1))
    assert b["x"].min() >= -1 and b["x"].max() <= 1
    m = UNet(data_info=ds.info, channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[16],
             num_heads=2, dropout=0.1, norm_groups=8)
    tr = Trainer(m, ds, options=TrainerOptions(steps=3, batch_size=8, device="cpu", cond_dropout=0.2,
                                               progress=False))
    tr.fit()
    assert tr.step == 3
