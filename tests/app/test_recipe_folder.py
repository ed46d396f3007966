"""``register_recipe_folder``: a plugin ships every recipe in its ``recipes/`` folder with one call, each
under its file name, and `fmkit recipe list` shows them with the plugin."""

from __future__ import annotations

from pathlib import Path

from fmkit.plugin import hookimpl, register_recipe_folder
from fmkit.testing import fresh_registry, run_cli

TINY = "data: {name: moons, n: 64}\nmodel: {name: mlp, hidden: 8, depth: 1}\n"


def test_every_yaml_of_the_folder_is_registered_under_its_name(tmp_path):
    (tmp_path / "b_two.yaml").write_text(TINY)
    (tmp_path / "a_one.yaml").write_text(TINY)
    (tmp_path / "notes.txt").write_text("not a recipe")
    got: list[tuple[str, Path]] = []
    assert register_recipe_folder(lambda name, path: got.append((name, path)), tmp_path) == ["a_one", "b_two"]
    assert got == [("a_one", tmp_path / "a_one.yaml"), ("b_two", tmp_path / "b_two.yaml")]
    assert register_recipe_folder(got.append, tmp_path / "missing") == []


def test_a_plugin_using_it_lists_its_recipes(tmp_path):
    (tmp_path / "ships.yaml").write_text(TINY)

    class Shipper:
        @hookimpl
        def register_recipes(self, register):
            register_recipe_folder(register, tmp_path)

    reg = fresh_registry()
    reg.add_plugin(Shipper(), name="shipper")
    assert reg.recipes()["ships"] == (tmp_path / "ships.yaml", "shipper")
    r = run_cli("recipe", "list", registry=reg)
    assert r.code == 0 and "ships" in r.out and "(shipper)" in r.out, r.out + r.err
