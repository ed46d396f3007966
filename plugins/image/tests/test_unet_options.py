"""Bad U-Net options are a user error that names the option and a fix, when the recipe is validated (what the
image size does not decide) or when the model meets the dataset (the rest): never a torch traceback from the
first forward, nor attention that silently never runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fmkit.plugin import DataInfo, FieldInfo, FmkitError, ModelError, RecipeError, load_recipe
from fmkit_image.unet import UNet, UNetOptions, build_unet

RECIPE = Path(__file__).resolve().parents[1] / "fmkit_image" / "recipes" / "images_mnist_cpu.yaml"
MNIST = DataInfo(fields={"x": FieldInfo((1, 28, 28))}, num_cond_classes=10)


def _build(info: DataInfo = MNIST, **over):
    """The registry's path: the recipe's model section validated by UNetOptions, then the factory with the data."""
    rec = load_recipe(RECIPE, [f"model.{k}={v}" for k, v in over.items()])
    opts = {k: v for k, v in rec.model.spec().items() if k != "name"}
    return build_unet(info, **UNetOptions(**opts).model_dump())


@pytest.mark.parametrize("over, key, words", [
    ({"channels": 48}, "norm_groups", ["48", "norm_groups 32", "multiple of 32", "divisor of 48"]),
    ({"num_heads": 3}, "num_heads", ["64 channels", "num_heads 3", "e.g. 2 or 4"]),
    ({"channel_mult": "[]"}, "channel_mult", ["channel_mult"]),
    ({"channel_mult": "[1, 0, 2]"}, "channel_mult", ["channel_mult"]),
    ({"attention_resolutions": "[0]"}, "attention_resolutions", ["attention_resolutions"]),
])
def test_recipe_validation_rejects_size_independent_mistakes(over, key, words):
    with pytest.raises(RecipeError) as e:
        load_recipe(RECIPE, [f"model.{k}={v}" for k, v in over.items()])
    text = str(e.value)
    assert "model" in text and key in text, text
    for w in words:
        assert w in text, (w, text)


def _model_error(info: DataInfo = MNIST, **kw) -> ModelError:
    base = {"channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1, "attention_resolutions": [7],
            "num_heads": 4, "dropout": 0.0}
    with pytest.raises(ModelError) as e:
        UNet(data_info=info, **{**base, **kw})
    assert isinstance(e.value, FmkitError) and e.value.where and e.value.fix
    return e.value


def test_attention_resolution_the_image_never_reaches():
    e = _model_error(attention_resolutions=[16])  # CIFAR's setting on 28 px MNIST: maps of 28, 14, 7
    assert e.where == "model.attention_resolutions"
    assert "[16]" in e.what and "28, 14, 7" in e.what and "[28, 14, 7]" in e.fix


def test_too_many_levels_for_the_image():
    e = _model_error(channel_mult=[1, 2, 2, 2, 2, 2, 2], attention_resolutions=[])
    assert e.where == "model.channel_mult"
    assert "7 levels" in e.what and "28 -> 14 -> 7 -> 4 -> 2 -> 1" in e.what and "at most 6 levels" in e.fix


def test_heads_at_an_attention_level_only_there():
    # the 28 px level (24 channels) has attention: 5 heads do not divide 24
    e = _model_error(channels=24, norm_groups=8, channel_mult=[1, 2], attention_resolutions=[28], num_heads=5)
    assert e.where == "model.num_heads" and "24 channels" in e.what and "num_heads 5" in e.what
    # heads that divide the attention levels' widths but not a level without attention: fine
    UNet(data_info=MNIST, channels=24, norm_groups=8, channel_mult=[1, 2], attention_resolutions=[], num_heads=16,
         num_res_blocks=1)  # 48 (middle) / 16 = 3


def test_groups_and_heads_also_checked_without_a_recipe():
    assert _model_error(channels=40).where == "model.norm_groups"
    assert _model_error(num_heads=6).where == "model.num_heads"


def test_sizes_that_work_stay_allowed():
    # odd maps (28 -> 14 -> 7 -> 4), sizes not divisible by 2^(levels-1) (30), fewer channels than groups
    for shape, mult, attn in (((1, 28, 28), [1, 2, 2, 2], [4]), ((3, 30, 30), [1, 2, 2, 2], [15, 8]),
                              ((1, 8, 8), [1, 2, 2, 2], [1])):
        UNet(data_info=DataInfo(fields={"x": FieldInfo(shape)}, num_cond_classes=None), channels=16,
             channel_mult=mult, attention_resolutions=attn, num_heads=2, num_res_blocks=1)
    _build()  # the shipped CPU recipe's model


def test_the_cli_prints_the_error_without_a_traceback(tmp_path):
    from image_testlib import write_idx

    root = tmp_path / "mnist"
    write_idx(root, n_train=40, n_test=20)
    env = {**os.environ, "FMKIT_CACHE_DIR": str(tmp_path / "cache"), "FMKIT_NO_PROGRESS": "1"}
    r = subprocess.run([sys.executable, "-m", "fmkit", "train", str(RECIPE), "--out", str(tmp_path / "run"),
                        "--set", f"data.root={root}", "--set", "model.attention_resolutions=[16]"],
                       capture_output=True, text=True, env=env, timeout=300, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stdout + r.stderr
    assert "Traceback" not in err and "model.attention_resolutions" in err and "28, 14, 7" in err, err
