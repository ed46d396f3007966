"""Meta-tests: every hook specification is exercised here by a plugin implementing it and documented
in docs/plugins.md with its exact signature; every built-in component is listed by `fmkit plugins`
with a description of its own."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import fmkit
import pytest
import torch
from pydantic import BaseModel
from fmkit.app import hookspecs
from fmkit.app.registry import BUILTIN
from fmkit.flow.data import TensorDataset
from fmkit.testing import check_coupling, check_dataset, check_path, check_solver, fresh_registry, run_cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
SPECS = {name: fn for name, fn in vars(hookspecs).items()
         if name.startswith("register_") and hookspecs.hookspec.project_name + "_spec" in vars(fn)}
DATA = TensorDataset({"x": torch.randn(32, 2)})


class Impl:
    """One plugin implementing every core hook with a real (small) component."""

    @fmkit.hookimpl
    def register_paths(self, register):
        register("t_path", lambda: fmkit.AffinePath(fmkit.CondOTScheduler()))

    @fmkit.hookimpl
    def register_couplings(self, register):
        register("t_coupling", fmkit.ExactOTCoupling)

    @fmkit.hookimpl
    def register_sources(self, register):
        register("t_source", lambda: fmkit.GaussianSource(std=2.0))

    @fmkit.hookimpl
    def register_models(self, register):
        register("t_model", lambda data_info: fmkit.MLP(data_info.dim(), hidden=8, depth=1))

    @fmkit.hookimpl
    def register_solvers(self, register):
        register("t_solver", lambda: fmkit.FixedStepSolver("rk4", 8))

    @fmkit.hookimpl
    def register_datasets(self, register):
        register("t_data", lambda: DATA)

    @fmkit.hookimpl
    def register_metrics(self, register):
        register("t_metric", lambda: lambda samples, dataset: {"mean": float(samples["x"].mean())})

    @fmkit.hookimpl
    def register_writers(self, register):
        def write(samples, out_dir, dataset, step):
            p = Path(out_dir) / f"n{step}.txt"
            p.write_text(str(len(samples["x"])))
            return [p]

        register("t_writer", lambda: write)

    @fmkit.hookimpl
    def register_callbacks(self, register):
        class Stop(fmkit.Callback):
            def on_step_end(self, trainer, step):
                if step == 3:
                    trainer.request_stop("test")

        register("t_callback", Stop)

    @fmkit.hookimpl
    def register_loggers(self, register):
        class Kept:
            name = "t_logger"

            def __init__(self, prefix: str) -> None:
                self.prefix, self.rows = prefix, []

            def start(self, run):
                self.rows.append(("start", run.step))

            def log_scalars(self, step, scalars):
                self.rows += [(f"{self.prefix}{k}", step) for k in scalars if k == "loss"]

            def finish(self):
                self.rows.append(("finish", None))

        class Options(BaseModel):
            prefix: str = "t/"

        register("t_logger", Kept, Options)

    @fmkit.hookimpl
    def register_recipes(self, register):
        register("t_recipe", Path(__file__))

    @fmkit.hookimpl
    def register_commands(self, app):
        app.command("t-hello")(lambda: print("hello from a plugin"))

    @fmkit.hookimpl
    def register_hookspecs(self, register):
        class Specs:
            @fmkit.plugin.hookspec
            def register_widgets(self, register):
                """A kind of this plugin's own."""

        register(Specs)


class WidgetMaker:
    @fmkit.hookimpl
    def register_widgets(self, register):
        register("w", dict, description="a widget")


def _check(hook: str, reg) -> None:
    info = DATA.info
    if hook == "register_paths":
        check_path(reg.build("paths", "t_path"), torch.randn(4, 2), torch.randn(4, 2))
    elif hook == "register_couplings":
        check_coupling(reg.build("couplings", "t_coupling"), {"x": torch.randn(8, 2)}, {"x": torch.randn(8, 2)})
    elif hook == "register_sources":
        s = reg.build("sources", "t_source")
        assert 1.8 < float(s.sample(torch.zeros(4000, 2)).std()) < 2.2
    elif hook == "register_models":
        out = reg.build("models", "t_model", data_info=info)({"x": torch.randn(3, 2)}, torch.rand(3))
        assert out["x"].shape == (3, 2)
    elif hook == "register_solvers":
        check_solver(reg.build("solvers", "t_solver"))
    elif hook == "register_datasets":
        check_dataset(reg.build("datasets", "t_data"))
    elif hook == "register_metrics":
        assert reg.build("metrics", "t_metric", data_info=info)({"x": torch.ones(4, 2)}, DATA) == {"mean": 1.0}
    elif hook == "register_writers":
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            (p,) = reg.build("writers", "t_writer", data_info=info)({"x": torch.ones(4, 2)}, Path(d), DATA, 7)
            assert p.read_text() == "4"
    elif hook == "register_callbacks":
        tr = fmkit.Trainer(fmkit.MLP(2, hidden=8, depth=1), DATA, callbacks=[reg.build("callbacks", "t_callback")],
                           options={"steps": 10, "batch_size": 8, "progress": False, "device": "cpu"})
        tr.fit()
        assert tr.step == 3 and tr.stopped_early == "test"
    elif hook == "register_loggers":
        import tempfile

        kept = reg.build("loggers", {"name": "t_logger", "prefix": "p/"})
        with tempfile.TemporaryDirectory() as d:
            fmkit.Trainer(fmkit.MLP(2, hidden=8, depth=1), DATA, loggers=[kept], run_dir=d,
                          options={"steps": 2, "batch_size": 8, "progress": False, "device": "cpu",
                                   "log_every": 1}).fit()
        assert kept.rows == [("start", 0), ("p/loss", 1), ("p/loss", 2), ("finish", None)], kept.rows
    elif hook == "register_recipes":
        assert reg.recipes()["t_recipe"][0] == Path(__file__)
    elif hook == "register_commands":
        r = run_cli("t-hello", registry=reg)
        assert r.code == 0 and r.out.strip() == "hello from a plugin", r
    elif hook == "register_hookspecs":
        reg.add_plugin(WidgetMaker(), name="widgets")
        reg.entries("models")  # no "unknown hook" error: the spec was declared first
        assert "widgets" in reg.kinds()  # a kind of components, served as the core's (tests/app/test_plugin_kinds.py)
        assert reg.get("widgets", "w").plugin == "widgets" and reg.build("widgets", "w") == {}
    else:  # pragma: no cover - a new hookspec needs its case here
        raise AssertionError(f"no test for hook {hook}: add a case to _check")


@pytest.mark.parametrize("hook", sorted(SPECS))
def test_every_hook_works_from_a_plugin(hook):
    _check(hook, fresh_registry(Impl()))


def test_every_hookspec_is_documented_with_its_exact_signature():
    text = DOC.read_text()
    assert len(SPECS) == 13, sorted(SPECS)
    for name, fn in SPECS.items():
        sig = f"`{name}{inspect.signature(fn)}`"
        assert sig in text, f"docs/plugins.md lacks {sig}"


def test_every_builtin_component_is_listed_with_a_description_of_its_own():
    r = run_cli("plugins", "--json", registry=fresh_registry())
    assert r.code == 0, r.err
    listed = {(c["kind"], c["name"]): c for c in json.loads(r.out)["components"]}
    reg = fresh_registry()
    n = 0
    for kind in hookspecs.KINDS:
        for name, e in reg.entries(kind).items():
            if e.plugin != BUILTIN:
                continue
            n += 1
            c = listed[(kind[:-1], name)]
            assert c["description"].strip(), f"built-in {kind[:-1]} {name!r} has no description"
            base = [inspect.getdoc(b) for b in getattr(e.factory, "__mro__", ())[1:]]
            assert c["description"] not in [(d or "").splitlines()[0] for d in base if d], \
                f"built-in {kind[:-1]} {name!r} shows a base class's docstring"
    assert n >= 30
