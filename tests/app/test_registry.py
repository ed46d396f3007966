"""The pluggy registry: hooks, options models, duplicate and lookup errors, build context."""

from __future__ import annotations

import fmkit
import pytest
from fmkit.app.registry import Registry
from fmkit.errors import RecipeError, RegistryError
from pydantic import BaseModel, ConfigDict


class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 4


class PluginA:
    @fmkit.hookimpl
    def register_models(self, register):
        register("tiny", lambda width, data_info=None: ("tiny", width, data_info), _Opts, "a tiny model")


class PluginB:
    @fmkit.hookimpl
    def register_models(self, register):
        register("tiny", lambda: None)


def test_fresh_registry_has_builtins_and_is_independent():
    a = Registry.fresh(entry_points=False)
    b = Registry.fresh(entry_points=False, plugins=[PluginA()])
    assert "condot" in a.entries("paths") and "mlp" in a.entries("models")
    assert "tiny" in b.entries("models") and "tiny" not in a.entries("models")
    assert a.entries("paths")["condot"].plugin == "fmkit.app.builtin.plugin"


def test_duplicate_name_names_both_plugins():
    reg = Registry.fresh(entry_points=False)
    reg.add_plugin(PluginA(), name="plugin-a")
    reg.add_plugin(PluginB(), name="plugin-b")
    with pytest.raises(RegistryError) as e:
        reg.entries("models")
    msg = str(e.value)
    assert "'tiny'" in msg and "plugin-a" in msg and "plugin-b" in msg


def test_unknown_name_lists_available_and_closest():
    reg = Registry.fresh(entry_points=False)
    with pytest.raises(RegistryError) as e:
        reg.get("couplings", "exact_ott", where="coupling.name")
    msg = str(e.value)
    assert "did you mean 'exact_ot'" in msg
    assert "independent" in msg and "sinkhorn" in msg and "coupling.name" in msg


def test_options_validated_with_key_path():
    reg = Registry.fresh(entry_points=False, plugins=[PluginA()])
    with pytest.raises(RecipeError) as e:
        reg.validate("models", {"name": "tiny", "widht": 3}, where="model")
    assert "model.widht" in str(e.value) and "unknown option" in str(e.value) and "width" in str(e.value)
    with pytest.raises(RecipeError) as e:
        reg.validate("models", {"name": "tiny", "width": "wide"}, where="model")
    assert "model.width" in str(e.value)


def test_build_passes_only_the_context_the_factory_asks_for():
    reg = Registry.fresh(entry_points=False, plugins=[PluginA()])
    assert reg.build("models", {"name": "tiny", "width": 7}, data_info="INFO", device="cpu") == ("tiny", 7, "INFO")
    solver = reg.build("solvers", {"name": "rk4", "steps": 3}, data_info="ignored")
    assert solver.method == "rk4" and solver.steps == 3


def test_plugin_allow_list_env(monkeypatch):
    monkeypatch.setenv("FMKIT_PLUGINS", "none")
    reg = Registry.fresh()
    assert set(reg.plugins()) == {"fmkit.app.builtin.plugin"}


def test_unknown_kind():
    with pytest.raises(RegistryError, match="unknown component kind"):
        Registry.fresh(entry_points=False).entries("widgets")


# -- a plugin that is both installed (entry point) and added in-process ------------------------
RING = '''
import fmkit


@fmkit.hookimpl
def register_models(register):
    register("ring_net", lambda: "ring")
'''

OTHER = '''
import fmkit


@fmkit.hookimpl
def register_couplings(register):
    register("other_coupling", lambda: "other")
'''


def _entry_points(monkeypatch, tmp_path, **modules: str):
    """Installs ``name=source`` modules as entry points ``name -> fmkit_t_<name>`` of group fmkit."""
    from importlib.metadata import EntryPoint

    import fmkit.app.registry

    eps = []
    for name, src in modules.items():
        if src:
            (tmp_path / f"fmkit_t_{name}.py").write_text(src)
        eps.append(EntryPoint(name=name, value=f"fmkit_t_{name}", group="fmkit"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(fmkit.app.plugin_host, "entry_points", lambda group: eps if group == "fmkit" else [])
    monkeypatch.delenv("FMKIT_PLUGINS", raising=False)
    monkeypatch.delenv("FMKIT_DISABLE_PLUGINS", raising=False)


def test_plugin_added_in_process_and_installed_loads_once_with_the_rest(monkeypatch, tmp_path):
    """Registry.fresh(plugins=[m]) where m is also an entry point (a plugin author testing their
    installed plugin): no pluggy ValueError, and the entry points after it still load."""
    import importlib

    _entry_points(monkeypatch, tmp_path, ring=RING, other=OTHER)
    ring = importlib.import_module("fmkit_t_ring")
    reg = Registry.fresh(plugins=[ring])
    assert reg.get("models", "ring_net").factory() == "ring"
    assert reg.get("couplings", "other_coupling").factory() == "other"  # loaded although listed after ring
    # registered once, under its entry point's name (the name the CLI gives it in errors)
    assert [p for p in reg.plugins() if "ring" in p] == ["ring"]
    reg.add_plugin(ring)  # adding it again changes nothing
    assert reg.get("models", "ring_net").plugin == "ring"
    named = Registry.fresh(plugins=[])
    named.add_plugin(ring, name="my_ring")  # a name given in-process is kept
    assert named.get("models", "ring_net").plugin == "my_ring"


def test_a_failing_entry_point_is_set_aside_and_the_others_load(monkeypatch, tmp_path, capsys):
    """A plugin failing at import is set aside and reported once, with file:line, and the other plugins
    work (one failing plugin used to stop every lookup, repeating its error at each)."""
    _entry_points(monkeypatch, tmp_path, other=OTHER, broken="import fmkit\nimport not_a_module_xyz\n")
    reg = Registry.fresh()
    assert "other_coupling" in reg.entries("couplings")
    assert "other_coupling" in reg.entries("couplings")  # again: no second report
    err = capsys.readouterr().err
    assert err.count("plugin 'broken'") == 1, err
    b = reg.broken["broken"]
    assert b.stage == "import" and b.error.startswith("ModuleNotFoundError") and b.location == "fmkit_t_broken.py:2"
    with pytest.raises(RegistryError, match=r"unknown model 'acme_net'; plugin 'broken' could not be loaded "
                                            r"\(import: ModuleNotFoundError.*fmkit_t_broken.py:2\) and may provide it"):
        reg.get("models", "acme_net")
    monkeypatch.setenv("FMKIT_DISABLE_PLUGINS", "broken")
    reg = Registry.fresh()
    assert "other_coupling" in reg.entries("couplings") and not reg.broken
    with pytest.raises(RegistryError, match=r"plugin 'broken' is installed but disabled \(FMKIT_DISABLE_PLUGINS"):
        reg.get("models", "acme_net")
