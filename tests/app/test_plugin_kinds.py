"""A kind that a plugin declares (``register_hookspecs``) is served by the registry as the core's kinds
are, with no code of the plugin's own: lookup with the closest name, options validated with their key
path, a plugin whose hook fails set aside, provenance, rows in `fmkit plugins` (and `--json`); and an
option that names a component of it (``ComponentOf``) is checked with the recipe, before any training,
built by the registry that holds it and recorded in the run's provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import pytest
import yaml
from fmkit.plugin import ComponentOf, ComponentSpec, RecipeError, RegistryError, hookimpl, hookspec
from fmkit.testing import fresh_registry, run_cli
from pydantic import BaseModel, ConfigDict, Field

# -- the test plugin: everything it writes for its kind is the hookspec and its hook implementations --


class GadgetSpecs:
    @hookspec
    def register_gadgets(self, register):
        """Gadgets: ``register(name, factory, options=None, description="")``."""


class GadgetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(3, ge=1, description="how big")


class Gadget:
    """A gadget of some size."""

    def __init__(self, size: int = 3) -> None:
        self.size = size


class WriterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gadget: Annotated[ComponentSpec, ComponentOf("gadgets")] = "gizmo"


class GadgetWriter:
    """Writes the size of the gadget its recipe names."""

    def __init__(self, gadget: ComponentSpec, *, registry) -> None:
        self.gadget = registry.build("gadgets", gadget, where="gadget")

    def __call__(self, samples, out_dir, dataset, step):
        p = Path(out_dir) / f"gadget_{step}.txt"
        p.write_text(str(self.gadget.size))
        return [p]


class GadgetPlugin:
    @hookimpl
    def register_hookspecs(self, register):
        register(GadgetSpecs)

    @hookimpl
    def register_gadgets(self, register):
        register("gizmo", Gadget, options=GadgetOptions, description="a gizmo")

    @hookimpl
    def register_writers(self, register):
        register("gadget_writer", GadgetWriter, options=WriterOptions)


class MoreGadgets:
    @hookimpl
    def register_gadgets(self, register):
        register("widget", Gadget)


class FailingGadgets:
    @hookimpl
    def register_gadgets(self, register):
        register("half", Gadget)
        raise KeyError("oops in register_gadgets")


def registry(*more: tuple[object, str]):
    reg = fresh_registry()
    for plugin, name in [(GadgetPlugin(), "gadgets"), (MoreGadgets(), "more"), *more]:
        reg.add_plugin(plugin, name=name)
    return reg


# -- the tests ---------------------------------------------------------------------------------------


def test_a_declared_kind_is_looked_up_with_the_closest_name():
    reg = registry()
    assert reg.kinds()[-1] == "gadgets"
    assert reg.get("gadgets", "gizmo").plugin == "gadgets" and reg.get("gadgets", "widget").plugin == "more"
    with pytest.raises(RegistryError) as e:
        reg.get("gadgets", "gizmoo", where="eval.writers.0.gadget.name")
    assert e.value.what == "unknown gadget 'gizmoo'" and e.value.where == "eval.writers.0.gadget.name"
    assert e.value.fix == "did you mean 'gizmo'? available gadgets: gizmo, widget"


def test_a_declared_kind_validates_options_with_their_key_path():
    reg = registry()
    assert reg.build("gadgets", {"name": "gizmo", "size": 5}).size == 5
    assert reg.resolve("gadgets", "gizmo") == {"name": "gizmo", "size": 3}
    with pytest.raises(RecipeError, match=r"gadget\.size: Input should be greater than or equal to 1"):
        reg.build("gadgets", {"name": "gizmo", "size": 0}, where="gadget")
    with pytest.raises(RecipeError, match=r"gadget\.sise: unknown option \(got 2\); did you mean 'size'\?"):
        reg.resolve("gadgets", {"name": "gizmo", "sise": 2}, where="gadget")
    with pytest.raises(RecipeError, match="gadget 'widget' takes no options"):
        reg.resolve("gadgets", {"name": "widget", "size": 2})


def test_a_name_of_a_declared_kind_registered_twice_names_both_plugins():
    class Again:
        @hookimpl
        def register_gadgets(self, register):
            register("gizmo", Gadget)

    with pytest.raises(RegistryError, match="gadget 'gizmo' is registered twice: by plugin 'again' and by plugin "
                                            "'gadgets'"):
        registry((Again(), "again")).entries("gadgets")


def test_a_plugin_whose_hook_of_a_declared_kind_fails_is_set_aside_and_the_others_stay(capsys):
    reg = registry((FailingGadgets(), "failing"))
    assert set(reg.entries("gadgets")) == {"gizmo", "widget"}  # nothing of the failing plugin half-registered
    b = reg.broken["failing"]
    assert b.stage == "register_gadgets" and b.error == "KeyError: 'oops in register_gadgets'"
    assert "plugin 'failing'" in capsys.readouterr().err
    with pytest.raises(RegistryError, match=r"unknown gadget 'half'; plugin 'failing' could not be loaded "
                                            r"\(register_gadgets: KeyError"):
        reg.get("gadgets", "half")


def test_fmkit_plugins_lists_a_declared_kind():
    reg = registry()
    r = run_cli("plugins", "--json", "--options", registry=reg)
    assert r.code == 0, r.err
    rows = {c["name"]: c for c in json.loads(r.out)["components"] if c["kind"] == "gadget"}
    assert rows["gizmo"] == {"kind": "gadget", "name": "gizmo", "plugin": "gadgets", "description": "a gizmo",
                             "options": "size (int, default 3)"}
    assert rows["widget"]["plugin"] == "more" and rows["widget"]["description"] == "A gadget of some size."
    for kind in ("gadgets", "gadget"):
        r = run_cli("plugins", "--kind", kind, registry=reg)
        assert r.code == 0 and "gizmo" in r.out and "widget" in r.out and "mlp" not in r.out, r.out + r.err


def test_a_component_named_in_options_is_checked_with_the_recipe_built_and_recorded(tmp_path):
    reg = registry()
    recipe = tmp_path / "r.yaml"
    base = ("name: gadgets\ndata: {name: moons, n: 256}\nmodel: {name: mlp, hidden: 8, depth: 1, time_dim: 4}\n"
            "solver: {name: euler, steps: 2}\ntrainer: {steps: 2, batch_size: 32, device: cpu, progress: false}\n")
    recipe.write_text(base + "eval: {every: 0, num_samples: 8, writers: [{name: gadget_writer, gadget: widgt}]}\n")
    r = run_cli("train", recipe, "--out", tmp_path / "bad", registry=reg)
    assert r.code == 2 and "unknown gadget 'widgt'" in r.err and "did you mean 'widget'?" in r.err, r.err
    assert "eval.writers.0.gadget.name" in r.err and not (tmp_path / "bad" / "checkpoints").exists()

    recipe.write_text(base + "eval: {every: 0, num_samples: 8, writers: [{name: gadget_writer, "
                             "gadget: {name: gizmo, size: 7}}]}\n")
    r = run_cli("train", recipe, "--out", tmp_path / "run", registry=reg)
    assert r.code == 0, r.out + r.err
    assert (tmp_path / "run" / "samples" / "gadget_2.txt").read_text() == "7"
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())["components"]
    assert prov["gadgets.gizmo"]["plugin"] == "gadgets" and prov["writers.gadget_writer"]["plugin"] == "gadgets"
    assert reg.provenance(["gadgets.widget"]) == {"gadgets.widget": {"plugin": "more", "distribution": None,
                                                                     "version": None}}
    resolved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert resolved["eval"]["writers"] == [{"name": "gadget_writer", "gadget": {"name": "gizmo", "size": 7}}]
