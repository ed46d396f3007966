"""Plugin loading that works first try: a broken plugin is reported (file:line) and never stops the
others or the CLI; misspelled or unmarked hooks, bad names, inherited descriptions, missing recipe
files and plugin selections that select nothing are caught; runs record who made their components."""

from __future__ import annotations

import json
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import fmkit
import fmkit.app.registry
import pytest
from fmkit.app.registry import Registry
from fmkit.errors import RegistryError
from reliability_helpers import TINY, cli, squash

GOOD = '''
import fmkit


@fmkit.hookimpl
def register_couplings(register):
    register("good_coupling", lambda: "good", description="a coupling of the good plugin")
'''

BROKEN_IMPORT = '''
import fmkit

x = 1
raise RuntimeError("boom at import")
'''

MISSPELLED = '''
import fmkit


@fmkit.hookimpl
def register_model(register):
    register("lab_net", lambda: None)
'''

UNMARKED = '''
def register_models(register):
    register("lab_net", lambda: None)
'''

RAISES_IN_HOOK = '''
import fmkit


@fmkit.hookimpl
def register_models(register):
    register("half_net", lambda: None)
    raise KeyError("oops in the hook")
'''

PROVIDES_NET = '''
import fmkit
import not_a_module_xyz  # the plugin's missing dependency


@fmkit.hookimpl
def register_models(register):
    register("acme_net", lambda: None)
'''


def install(monkeypatch, tmp_path, **modules: str) -> None:
    """Install ``name=source`` modules as entry points ``name -> fmkit_p_<name>`` of group fmkit and
    make the process-wide registry a fresh one that sees them."""
    eps = []
    for name, src in modules.items():
        (tmp_path / f"fmkit_p_{name}.py").write_text(src)
        monkeypatch.delitem(sys.modules, f"fmkit_p_{name}", raising=False)  # each test imports its own
        eps.append(EntryPoint(name=name, value=f"fmkit_p_{name}", group="fmkit"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(fmkit.app.plugin_host, "entry_points", lambda group: eps if group == "fmkit" else [])
    monkeypatch.delenv("FMKIT_PLUGINS", raising=False)
    monkeypatch.delenv("FMKIT_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("FMKIT_DEBUG", raising=False)
    new_process()


def new_process() -> None:
    """What a new `fmkit` process starts with: a registry that has loaded nothing yet."""
    fmkit.app.registry._DEFAULT = Registry.fresh()


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", None)


@pytest.mark.parametrize("source, stage, needle", [
    (BROKEN_IMPORT, "import", "RuntimeError: boom at import"),
    (MISSPELLED, "hooks", "implements hook 'register_model', which no hook specification declares (did you mean "
                          "'register_models'?)"),
    (UNMARKED, "hooks", "its function 'register_models' is not marked with @hookimpl (from fmkit.plugin)"),
    (RAISES_IN_HOOK, "register_models", "KeyError: 'oops in the hook'"),
])
def test_a_broken_plugin_is_set_aside_with_its_error_and_the_others_work(monkeypatch, tmp_path, source, stage, needle):
    install(monkeypatch, tmp_path, good=GOOD, bad=source)
    reg = fmkit.app.registry.get_registry()
    assert "good_coupling" in reg.entries("couplings")
    models = reg.entries("models")
    assert "lab_net" not in models and "half_net" not in models  # nothing half-registered
    b = reg.broken["bad"]
    assert b.stage == stage and needle in b.error, b
    if source in (BROKEN_IMPORT, RAISES_IN_HOOK):
        line = 5 if source is BROKEN_IMPORT else 8
        assert b.location == f"fmkit_p_bad.py:{line}", b.location


def test_with_a_broken_plugin_installed_the_cli_works_and_names_it(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path, good=GOOD, acme=PROVIDES_NET)
    r = cli("--help")
    assert r.code == 0 and "train" in r.out, r.text
    new_process()
    r = cli("plugins")
    text = squash(r.text)
    assert r.code == 0, r.text
    assert "plugin 'acme' (fmkit_p_acme) is not loaded: import failed at fmkit_p_acme.py:3: ModuleNotFoundError" \
           in text, text
    assert "good_coupling" in text and "Traceback" not in text
    Path("tiny.yaml").write_text(TINY)
    new_process()
    r = cli("train", "tiny.yaml", "--out", "run")
    assert r.code == 0, r.text
    assert squash(r.err).count("plugin 'acme'") == 1, r.err  # reported once per command
    Path("acme.yaml").write_text(TINY.replace("{name: mlp, hidden: 8, depth: 1, time_dim: 4}", "{name: acme_net}"))
    new_process()
    r = cli("train", "acme.yaml", "--out", "run2")
    text = squash(r.err)
    assert r.code == 2 and "unknown model 'acme_net'; plugin 'acme' could not be loaded (import: " \
                           "ModuleNotFoundError: No module named 'not_a_module_xyz', at fmkit_p_acme.py:3) and may " \
                           "provide it" in text, r.text
    new_process()
    r = cli("--debug", "plugins")
    assert "Traceback" in r.err and "not_a_module_xyz" in r.err, r.text


def test_plugins_json_lists_distribution_version_hooks_and_the_broken(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path, good=GOOD, bad=BROKEN_IMPORT)
    r = cli("plugins", "--json")
    assert r.code == 0, r.text
    doc = json.loads(r.out)
    builtin = next(p for p in doc["plugins"] if p["name"] == "fmkit.app.builtin.plugin")
    assert builtin["distribution"] == "fmkit" and builtin["version"] == fmkit.__version__
    assert "register_models" in builtin["hooks"]
    good = next(p for p in doc["plugins"] if p["name"] == "good")
    assert good["hooks"] == ["register_couplings"]
    assert [b["name"] for b in doc["broken"]] == ["bad"] and doc["broken"][0]["location"] == "fmkit_p_bad.py:5"
    comp = next(c for c in doc["components"] if c["name"] == "good_coupling")
    assert comp == {"kind": "coupling", "name": "good_coupling", "plugin": "good",
                    "description": "a coupling of the good plugin"}


def test_a_plugin_registering_nothing_is_listed(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path, empty="import fmkit\n")
    infos = {i.name: i for i in fmkit.app.registry.get_registry().plugin_infos()}
    assert "empty" in infos and infos["empty"].hooks == ()
    r = cli("plugins", "--json")
    assert {"name": "empty", "hooks": []}.items() <= next(p for p in json.loads(r.out)["plugins"]
                                                          if p["name"] == "empty").items(), r.out


class Misspelled:
    @fmkit.hookimpl
    def register_dataset(self, register):
        register("d", lambda: None)


def test_a_misspelled_hook_added_in_process_is_an_error_naming_it():
    reg = Registry.fresh(entry_points=False, plugins=[])
    reg.add_plugin(Misspelled(), name="lab")
    with pytest.raises(RegistryError, match=r"plugin 'lab': it implements hook 'register_dataset'.*did you mean "
                                            r"'register_datasets'"):
        reg.entries("models")


@pytest.mark.parametrize("name", ["Lab Net!", "", "a/b", "x" * 65, 3])
def test_component_names_a_recipe_could_not_spell_are_refused(name):
    class P:
        @fmkit.hookimpl
        def register_models(self, register):
            register(name, lambda: None)

    reg = Registry.fresh(entry_points=False, plugins=[])
    reg.add_plugin(P(), name="lab")
    with pytest.raises(RegistryError, match="not a valid component name"):
        reg.entries("models")


def test_a_component_without_a_docstring_gets_no_inherited_description():
    from fmkit.flow.data import Dataset

    class NoDoc(Dataset):
        pass

    class P:
        @fmkit.hookimpl
        def register_datasets(self, register):
            register("nodoc", NoDoc)

    reg = Registry.fresh(entry_points=False, plugins=[])
    reg.add_plugin(P(), name="lab")
    assert reg.get("datasets", "nodoc").description == ""


def test_a_recipe_whose_file_is_missing_is_not_listed_and_the_plugin_is_named(tmp_path, capsys):
    class P:
        @fmkit.hookimpl
        def register_recipes(self, register):
            register("here", tmp_path / "here.yaml")
            register("gone", tmp_path / "gone.yaml")

    (tmp_path / "here.yaml").write_text(TINY)
    reg = Registry.fresh(entry_points=False, plugins=[])
    reg.add_plugin(P(), name="lab")
    assert sorted(reg.recipes()) == ["here"]
    err = squash(capsys.readouterr().err)
    assert "plugin 'lab' registers recipe 'gone'" in err and "package-data" in err, err


@pytest.mark.parametrize("env, value, needle", [
    ("FMKIT_PLUGINS", "goood", "FMKIT_PLUGINS names 'goood', which is not an installed plugin: did you mean 'good'?"),
    ("FMKIT_PLUGINS", "", "FMKIT_PLUGINS is set but empty, so no plugin is loaded"),
    ("FMKIT_DISABLE_PLUGINS", "nope", "FMKIT_DISABLE_PLUGINS names 'nope', which is not an installed plugin"),
])
def test_plugin_selections_that_select_nothing_are_noted(monkeypatch, tmp_path, capsys, env, value, needle):
    install(monkeypatch, tmp_path, good=GOOD)
    monkeypatch.setenv(env, value)
    reg = Registry.fresh()
    reg.entries("models")
    assert needle in squash(capsys.readouterr().err)


def test_a_run_needing_a_disabled_plugin_names_it(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path, good=GOOD)
    monkeypatch.setenv("FMKIT_DISABLE_PLUGINS", "good")
    reg = Registry.fresh()
    with pytest.raises(RegistryError, match=r"plugin 'good' is installed but disabled \(FMKIT_DISABLE_PLUGINS names"):
        reg.get("couplings", "good_coupling")


def test_a_run_records_which_plugin_distribution_and_version_made_its_components(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path)
    Path("tiny.yaml").write_text(TINY)
    r = cli("train", "tiny.yaml", "--out", "run")
    assert r.code == 0, r.text
    prov = json.loads(Path("run/provenance.json").read_text())
    assert prov["fmkit"] == fmkit.__version__ and prov["torch"]
    assert prov["components"]["models.mlp"] == {"plugin": "fmkit.app.builtin.plugin", "distribution": "fmkit",
                                                "version": fmkit.__version__}
    assert {"datasets.moons", "solvers.euler", "paths.condot", "sources.gaussian"} <= set(prov["components"])
    from fmkit.engine import checkpoint as ck

    meta = ck.load_checkpoint(ck.find_latest(Path("run/checkpoints"))).meta
    assert meta["provenance"] == prov


BAD_NAME = '''
import fmkit


@fmkit.hookimpl
def register_models(register):
    register("Lab Net!", lambda: None)
'''


def test_an_installed_plugin_registering_a_bad_name_is_set_aside_not_fatal(monkeypatch, tmp_path):
    install(monkeypatch, tmp_path, good=GOOD, bad=BAD_NAME)
    reg = fmkit.app.registry.get_registry()
    assert "mlp" in reg.entries("models")  # the lookup works; the bad plugin is reported
    assert "good_coupling" in reg.entries("couplings")
    b = reg.broken["bad"]
    assert b.stage == "register_models" and "not a valid component name" in b.error, b
    r = cli("plugins")
    assert r.code == 0 and "plugin 'bad'" in squash(r.err), r.text
