"""Bad DiT options are a user error naming the option and a fix, when the recipe is validated (widths) or when the
model meets the dataset (the patch against the image); the shipped CPU recipe trains a few steps through the CLI,
as flow matching and as MeanFlow (two times)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fmkit.plugin import DataInfo, FieldInfo, FmkitError, ModelError, RecipeError, load_recipe
from fmkit.testing import read_metrics, run_cli
from fmkit_image.dit import DiT, DiTOptions, build_dit
from image_testlib import write_idx

RECIPE = Path(__file__).resolve().parents[1] / "fmkit_image" / "recipes" / "images_mnist_dit_cpu.yaml"
MNIST = DataInfo(fields={"x": FieldInfo((1, 28, 28))}, num_cond_classes=10)


@pytest.mark.parametrize("over, key, words", [
    ({"num_heads": 5}, "num_heads", ["hidden 192", "num_heads 5", "e.g. 4 or 6", "multiple of 20 (e.g. 180 or 200)"]),
    ({"hidden": 90, "num_heads": 2}, "hidden", ["hidden 90", "multiple of 4", "e.g. 88 or 92"]),
    ({"positions": "rope"}, "positions", ["sincos", "learned"]),
    ({"patch_size": 0}, "patch_size", ["patch_size"]),
    ({"depth": 0}, "depth", ["depth"]),
    ({"mlp_ratio": 0}, "mlp_ratio", ["mlp_ratio"]),
    ({"patch": 4}, "patch", ["patch"]),  # a misspelt key: extra keys are refused
])
def test_recipe_validation_rejects_size_independent_mistakes(over, key, words):
    with pytest.raises(RecipeError) as e:
        load_recipe(RECIPE, [f"model.{k}={v}" for k, v in over.items()])
    text = str(e.value)
    assert "model" in text and key in text, text
    for w in words:
        assert w in text, (w, text)


def test_a_patch_that_does_not_tile_the_image():
    with pytest.raises(ModelError) as e:
        DiT(data_info=MNIST, patch_size=3, hidden=32, depth=1, num_heads=2)
    err = e.value
    assert isinstance(err, FmkitError) and err.where == "model.patch_size"
    assert "28x28" in err.what and "patch_size 3" in err.what and "2, 4, 7, 14, 28" in err.fix


def test_widths_also_checked_without_a_recipe():
    with pytest.raises(ModelError) as e:
        DiT(data_info=MNIST, hidden=30, num_heads=4)
    assert e.value.where == "model.num_heads"


def test_not_an_image_dataset():
    with pytest.raises(ModelError) as e:
        DiT(data_info=DataInfo(fields={"x": FieldInfo((2,))}, num_cond_classes=None))
    assert e.value.where == "model" and "image field" in e.value.what


def test_the_shipped_recipe_builds():
    rec = load_recipe(RECIPE)
    opts = {k: v for k, v in rec.model.spec().items() if k != "name"}
    m = build_dit(MNIST, **DiTOptions(**opts).model_dump())
    assert m.grid == (7, 7) and sum(p.numel() for p in m.parameters()) == 4_167_568  # the header's count


@pytest.fixture(scope="module")
def mnist_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit") / "mnist"
    write_idx(root, n_train=64, n_test=16)
    return root


SMOKE = ["--set", "trainer.steps=3", "--set", "trainer.batch_size=8", "--set", "trainer.progress=false",
         "--set", "trainer.log_every=1", "--set", "model.hidden=32", "--set", "model.depth=2",
         "--set", "model.num_heads=2"]


def test_the_recipe_trains_through_the_cli(mnist_root, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", RECIPE, "--out", out, "--set", f"data.root={mnist_root}", *SMOKE)
    assert r.code == 0, r.out + r.err
    losses = read_metrics(out)["loss"]
    assert [s for s, _ in losses] == [1, 2, 3] and all(v > 0 for _, v in losses)
    assert list(out.glob("checkpoints/*"))


def test_meanflow_trains_through_the_cli(mnist_root, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", RECIPE, "--out", out, "--set", f"data.root={mnist_root}", *SMOKE,
                "--set", "model.two_times=true", "--set", "objective={name: meanflow}",
                "--set", "solver={name: meanflow, steps: 1}", "--set", "eval.guidance_scale=null")
    assert r.code == 0, r.out + r.err
    assert len(read_metrics(out)["loss"]) == 3


def test_the_cli_prints_a_bad_patch_without_a_traceback(mnist_root, tmp_path):
    r = run_cli("train", RECIPE, "--out", tmp_path / "run", "--set", f"data.root={mnist_root}",
                "--set", "model.patch_size=5")
    assert r.code == 2, r.out + r.err
    err = r.out + r.err
    assert "Traceback" not in err and "model.patch_size" in err and "28x28" in err, err
