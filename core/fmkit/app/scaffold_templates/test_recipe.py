"""Plugin __plugin__'s recipe trains through the `fmkit` command, with the plugin registered."""

from fmkit.testing import fresh_registry, run_cli

import fmkit___plugin__.plugin


def test_recipe_trains_with_the_plugin(tmp_path):
    reg = fresh_registry(fmkit___plugin__.plugin)
    r = run_cli("train", "__plugin___demo", "--out", tmp_path / "run", "--set", "trainer.steps=20", registry=reg)
    assert r.code == 0, r.out + r.err
    assert (tmp_path / "run" / "checkpoints").is_dir()
