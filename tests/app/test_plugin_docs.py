"""The examples in docs/plugins.md run as written: the dataset example is a working plugin, and
the in-process test example trains on it (with the plugin also installed as an entry point)."""

from __future__ import annotations

import importlib
import re
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import fmkit.app.registry
import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"


def _blocks() -> dict[str, str]:
    """Python code blocks of the doc, by the file named in their first comment line."""
    out = {}
    for code in re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S):
        first = code.splitlines()[0]
        out[first.removeprefix("# ").strip() if first.startswith("# ") else "test"] = code
    return out


@pytest.fixture
def plugin_package(tmp_path, monkeypatch) -> Path:
    pkg = tmp_path / "fmkit_myplugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data.py").write_text(_blocks()["fmkit_myplugin/data.py"])
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("fmkit_myplugin")]:
        del sys.modules[name]


def test_dataset_example_is_a_working_dataset(plugin_package):
    data = importlib.import_module("fmkit_myplugin.data")
    ds = data.Rings(n=64, rings=3)
    assert ds.info.fields["x"].shape == (2,) and ds.info.num_cond_classes == 3
    batch = ds.collate([ds[i] for i in range(4)])  # the base class's collate, batches, reference, template
    assert batch["x"].shape == (4, 2) and batch["cond"].shape == (4,)
    assert len(ds.batches(0, 16, seed=0)) == 4 and ds.reference(8, seed=1)["x"].shape == (8, 2)
    assert ds.template(5)["cond"].shape == (5,)


def test_in_process_test_example_runs_with_the_plugin_installed_too(plugin_package, monkeypatch):
    """The doc's test, with `entry_points=True` as well: the same module installed as an entry point."""
    recipes = plugin_package / "recipes"
    recipes.mkdir()
    (recipes / "rings.yaml").write_text("data: {name: rings, n: 256}\nmodel: {name: mlp, hidden: 16, depth: 1}\n"
                                        "trainer: {batch_size: 64, progress: false}\n")
    monkeypatch.chdir(plugin_package)
    code = _blocks()["test"]
    ns: dict = {}
    exec(compile(code, str(DOC), "exec"), ns)  # noqa: S102 - the doc's own example
    ns["test_rings_keep_the_contract"]()
    ns["test_trains_on_my_data"](plugin_package / "a")
    assert (plugin_package / "a" / "run" / "checkpoints").is_dir()

    ep = EntryPoint(name="myplugin", value="fmkit_myplugin.data", group="fmkit")
    monkeypatch.setattr(fmkit.app.plugin_host, "entry_points", lambda group: [ep] if group == "fmkit" else [])
    monkeypatch.delenv("FMKIT_PLUGINS", raising=False)
    monkeypatch.delenv("FMKIT_DISABLE_PLUGINS", raising=False)
    installed = code.replace("fresh_registry(my_data)", "__import__('fmkit').Registry.fresh(plugins=[my_data])")
    assert installed != code
    exec(compile(installed, str(DOC), "exec"), ns)  # noqa: S102
    ns["test_trains_on_my_data"](plugin_package / "b")


def test_the_two_time_model_of_the_doc_keeps_the_contract_and_trains_a_meanflow_step():
    """docs/plugins.md, 'Models with two times': its example net passes check_two_time_model and takes a
    MeanFlow step; built without two_times, a call with r is refused (not silently ignored)."""
    import fmkit
    import torch
    from fmkit.testing import check_model, check_two_time_model

    ns: dict = {}
    exec(compile(_blocks()["fmkit_myplugin/net.py"], str(DOC), "exec"), ns)  # noqa: S102 - the doc's example
    ds = fmkit.TensorDataset(torch.randn(32, 2))
    net = ns["TwoTimeNet"](two_times=True)
    check_model(net, ds)
    check_two_time_model(net, ds)
    loss, _ = fmkit.MeanFlowObjective(fmkit.AffinePath(fmkit.CondOTScheduler()))(net, ds.get_batch(list(range(8))))
    loss.backward()
    with pytest.raises(fmkit.errors.ModelError, match="built for one time"):
        ns["TwoTimeNet"]()({"x": torch.randn(2, 2)}, torch.rand(2), r=torch.rand(2))
