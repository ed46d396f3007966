"""The resolved recipe holds every component's full options, and a checkpoint's fingerprint holds
the model, data, path and source with all their options: a changed default, path or source is
refused on resume, sample and evaluate, naming the differing keys."""

from __future__ import annotations

import json
from pathlib import Path

import fmkit.app.registry
import pytest
import yaml
from fmkit import hookimpl
from fmkit.app.recipe import load_recipe, parse_yaml, validate
from fmkit.app.registry import Registry
from fmkit.app.run import build_trainer, fingerprint
from fmkit.errors import CheckpointError, RecipeError
from pydantic import BaseModel, Field
from reliability_helpers import ROOT, TINY, cli, fresh_registry, squash
from torch import nn


class LaxOptions(BaseModel):  # no extra="forbid": typos must still be refused
    hidden: int = 8
    width_factor: float = Field(1.0, alias="widthFactor")


class WidthOptions(BaseModel):
    width: int = 8


def _net(data_info, width: int = 8) -> nn.Module:
    return nn.Linear(data_info.dim("x"), data_info.dim("x"))


def _plugin(default_width: int):
    """A plugin whose model option ``width`` defaults to ``default_width`` (a new plugin release)."""
    opts = type("WidthOptions", (BaseModel,), {"__annotations__": {"width": int}, "width": default_width})

    class Plugin:
        @hookimpl
        def register_models(self, register):
            register("lax", lambda hidden, width_factor: (hidden, width_factor), LaxOptions)
            register("wide", lambda data_info, width: _Wrap(data_info), opts)

    return Plugin()


class _Wrap(nn.Module):
    def __init__(self, data_info) -> None:
        super().__init__()
        self.lin = nn.Linear(data_info.dim("x") + 1, data_info.dim("x"))

    def forward(self, x_t, t, cond=None):
        import torch

        return {"x": self.lin(torch.cat([x_t["x"], t[:, None]], 1))}


def _reg(default_width: int = 8) -> Registry:
    return Registry.fresh(entry_points=False, plugins=[_plugin(default_width)])


def test_unknown_option_refused_even_without_extra_forbid():
    """An unknown option is refused with a closest-name hint even when the options model does not forbid
    extras (pydantic's default would drop it and build the model with the default)."""
    with pytest.raises(RecipeError) as ei:
        _reg().validate("models", {"name": "lax", "hiden": 3}, where="model")
    msg = squash(ei.value.render())
    assert "model.hiden: unknown option (got 3); did you mean 'hidden'?" in msg
    # the alias is the key pydantic accepts; the field name is not (no populate_by_name)
    _, opts = _reg().validate("models", {"name": "lax", "widthFactor": 2.0}, where="model")
    assert opts.width_factor == 2.0
    with pytest.raises(RecipeError, match="model.width_factor: unknown option"):
        _reg().validate("models", {"name": "lax", "width_factor": 2.0}, where="model")


def test_resolved_recipe_holds_every_option_and_reads_back_the_same(tmp_path):
    """`recipe show` used to print `model: {name: mlp, hidden: 8}`: the defaults were not recorded."""
    Path(tmp_path / "r.yaml").write_text(TINY + "path: {name: condot, fields: {x: {name: vp}}}\n"
                                         "eval: {metrics: [{name: w2}]}\n")
    rec = load_recipe(tmp_path / "r.yaml", registry=Registry.fresh(entry_points=False))
    d = rec.to_dict()
    assert d["model"] == {"name": "mlp", "hidden": 8, "depth": 1, "time_dim": 4, "field": "x", "two_times": False,
                          "time_max_freq": None, "guidance_input": False}
    assert d["path"]["prediction"] == "velocity" and d["path"]["sigma_min"] == 0.0
    assert d["path"]["fields"]["x"] == {"name": "vp", "prediction": "velocity", "beta_min": 0.1, "beta_max": 20.0}
    assert list(d["source"].items()) == [("name", "gaussian"), ("std", 1.0), ("fields", {})]
    assert d["eval"]["metrics"][0]["num_reference"] > 0
    again = validate(parse_yaml(rec.to_yaml()), Registry.fresh(entry_points=False))
    assert again.to_yaml() == rec.to_yaml()


def test_every_shipped_recipe_resolves_to_a_fixed_point():
    """The resolved recipe (a run's recipe.yaml) validates to itself, aliases and tuples included."""
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        try:
            rec = load_recipe(path)
        except RecipeError as exc:  # a plugin recipe whose plugin is not installed here
            if "unknown" in str(exc):
                continue
            raise
        assert validate(parse_yaml(rec.to_yaml())).to_yaml() == rec.to_yaml(), path
    rec = validate({"data": {"name": "moons"}, "model": {"name": "lax", "widthFactor": 3}}, _reg())
    assert rec.to_dict()["model"] == {"name": "lax", "hidden": 8, "widthFactor": 3.0}
    assert validate(parse_yaml(rec.to_yaml()), _reg()).to_yaml() == rec.to_yaml()


def test_cli_recipe_show_prints_the_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", fresh_registry())
    Path("tiny.yaml").write_text(TINY)
    r = cli("recipe", "show", "tiny.yaml")
    assert r.code == 0, r.text
    shown = yaml.safe_load(r.out)
    assert shown["model"]["field"] == "x" and shown["path"]["prediction"] == "velocity"
    assert shown["data"]["noise"] == 0.05


def test_fingerprint_ignores_key_order_and_survives_json():
    reg = Registry.fresh(entry_points=False)
    a = validate(parse_yaml("data: {name: moons, n: 64, noise: 0.1}\nmodel: {name: mlp, hidden: 8, depth: 2}\n"
                            "source: {name: gaussian, std: 2.0}\n"), reg)
    b = validate(parse_yaml("model: {depth: 2, hidden: 8, name: mlp}\nsource: {std: 2.0, name: gaussian}\n"
                            "data: {noise: 0.1, name: moons, n: 64}\n"), reg)
    fa, fb = fingerprint(a), fingerprint(b)
    assert fa == fb and json.loads(json.dumps(fa)) == fb
    assert fa["path"] == {"name": "condot", "prediction": "velocity", "sigma_min": 0.0, "fields": {}}
    assert fa["source"]["std"] == 2.0


def test_resume_refuses_a_changed_plugin_default(tmp_path):
    """A recipe that leaves `width` to its default, resumed after the plugin changed the default: old
    code compared only the names written in the recipe and resumed silently."""
    text = TINY.replace("model: {name: mlp, hidden: 8, depth: 1, time_dim: 4}", "model: {name: wide}")
    (tmp_path / "r.yaml").write_text(text)
    reg8 = _reg(8)
    build_trainer(load_recipe(tmp_path / "r.yaml", registry=reg8), tmp_path / "run", registry=reg8).fit()
    reg16 = _reg(16)
    rec = load_recipe(tmp_path / "r.yaml", ["trainer.steps=9"], registry=reg16)
    with pytest.raises(CheckpointError) as ei:
        build_trainer(rec, tmp_path / "run", registry=reg16).fit(resume=True)
    assert "model.width: 8 in the checkpoint, 16 in this recipe" in ei.value.render()
    rec = load_recipe(tmp_path / "r.yaml", ["trainer.steps=9", "model.width=8"], registry=reg16)
    assert build_trainer(rec, tmp_path / "run", registry=reg16).fit(resume=True).step == 9


@pytest.fixture
def velocity_run(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", fresh_registry())
    Path("tiny.yaml").write_text(TINY + "eval: {metrics: [{name: w2, num_reference: 64}], num_samples: 64}\n")
    r = cli("train", "tiny.yaml", "--out", "run")
    assert r.code == 0, r.text
    return Path("run")


def test_resume_refuses_another_prediction_target(velocity_run):
    """A resume with another prediction target (or source) than the checkpoint's is refused naming both
    values, not trained on with the wrong target."""
    r = cli("train", "--resume", "run", "--set", "trainer.steps=9", "--set", "path.prediction=x1")
    assert r.code == 2 and "Traceback" not in r.text
    msg = squash(r.err)
    assert "the checkpoint was written for a different path: path.prediction: 'velocity' in the checkpoint, " \
           "'x1' in this recipe" in msg and "where: run" in msg
    r = cli("train", "--resume", "run", "--set", "trainer.steps=9", "--set", "source.std=2.0")
    assert r.code == 2 and "source.std: 1.0 in the checkpoint, 2.0 in this recipe" in squash(r.err)


def test_evaluate_and_sample_refuse_another_path_or_source(velocity_run):
    for cmd in (["evaluate", "run", "-n", "16"], ["sample", "run", "-n", "4"]):
        r = cli(*cmd, "--set", "path.prediction=x1")
        assert r.code == 2 and "Traceback" not in r.text, r.text
        assert "path.prediction: 'velocity' in the checkpoint, 'x1' in this recipe" in squash(r.err)
        r = cli(*cmd, "--set", "path.fields={x: {name: vp}}")
        assert r.code == 2 and "path.fields.x: absent in the checkpoint, {'name': 'vp'" in squash(r.err)
    assert cli("evaluate", "run", "-n", "16").code == 0  # the run's own recipe still works


def test_legacy_checkpoint_is_held_to_the_options_it_recorded(velocity_run):
    """A checkpoint from before this change recorded only the recipe's own keys of model and data."""
    from fmkit.engine.fingerprint import fingerprint_diff

    legacy = {"model": {"name": "mlp", "hidden": 8}, "data": {"name": "moons", "n": 256}}
    rec = load_recipe("tiny.yaml")
    assert fingerprint_diff(legacy, fingerprint(rec)) == []
    rec = load_recipe("tiny.yaml", ["model.hidden=9"])
    assert fingerprint_diff(legacy, fingerprint(rec)) == ["model.hidden: 8 in the checkpoint, 9 in this recipe"]
