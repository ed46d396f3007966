"""fmkit: conditional flow matching for every data modality — the library API.

Three layers, imported one way only (application -> engine -> math):

- ``fmkit.flow``   the math: states, the dataset contract, paths, couplings, sources, the training
  objectives, solvers, sampling, likelihood, guidance;
- ``fmkit.engine`` the Trainer and what it runs on (data stream, checkpoints, ...);
- ``fmkit.app``    recipes, the plugin registry, the built-in plugin, runs and the ``fmkit`` CLI.

Plugin authors import :mod:`fmkit.plugin`. The names below load on first use, so ``import fmkit``
costs nothing until one is touched (and pulls in no plugin).
"""

from __future__ import annotations

# ruff: noqa: F401
# (the TYPE_CHECKING imports at the end are for static checkers; __all__ is built from _WHERE)
import importlib
from typing import TYPE_CHECKING, Any

from fmkit._version import __version__

#: public name -> module defining it
_WHERE = {
    **dict.fromkeys(["AffinePath", "CondOTScheduler", "CosineScheduler", "DiscretePath", "PathSample",
                     "PolynomialScheduler", "ProbPath", "Scheduler", "SchedulerOutput", "StatePath", "VPScheduler"],
                    "fmkit.flow.paths"),
    **dict.fromkeys(["Coupling", "ExactOTCoupling", "GivenCoupling", "IndependentCoupling", "SinkhornCoupling"],
                    "fmkit.flow.couplings"),
    **dict.fromkeys(["DataInfo", "Dataset", "FieldInfo", "TensorDataset"], "fmkit.flow.data"),
    **dict.fromkeys(["CategoricalSource", "GaussianSource", "Source", "StateSource"], "fmkit.flow.sources"),
    **dict.fromkeys(["AdaptiveSolver", "FixedStepSolver", "MeanFlowSolver", "Solution", "Solver"],
                    "fmkit.flow.solvers"),
    **dict.fromkeys(["CFMObjective", "MeanFlowObjective"], "fmkit.flow.objectives"),
    "ClassifierFreeGuidance": "fmkit.flow.guidance",
    "log_likelihood": "fmkit.flow.likelihood",
    "generate": "fmkit.flow.sampling",
    "TensorModel": "fmkit.flow.adapter",
    "FmkitError": "fmkit.errors",
    "Trainer": "fmkit.engine.trainer",
    "Callback": "fmkit.engine.callbacks",
    "FixHints": "fmkit.engine.hints",
    **dict.fromkeys(["EvalOptions", "TrainerOptions"], "fmkit.engine.options"),
    **dict.fromkeys(["Recipe", "load_recipe"], "fmkit.app.recipe"),
    **dict.fromkeys(["Registry", "get_registry"], "fmkit.app.registry"),
    "hookimpl": "fmkit.app.hookspecs",
    "MLP": "fmkit.app.builtin.mlp",
    "W2Metric": "fmkit.app.builtin.metrics",
}
#: modules reachable as attributes after a plain ``import fmkit`` (``fmkit.metrics.W2Metric()``)
_MODULES = {"metrics": "fmkit.app.builtin.metrics", "plugin": "fmkit.plugin", "errors": "fmkit.errors",
            "flow": "fmkit.flow", "engine": "fmkit.engine", "app": "fmkit.app"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    else:
        raise AttributeError(f"module 'fmkit' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | set(_MODULES))


if TYPE_CHECKING:  # static checkers and IDEs see the eager imports
    from fmkit.app.builtin.metrics import W2Metric
    from fmkit.app.builtin.mlp import MLP
    from fmkit.app.hookspecs import hookimpl
    from fmkit.app.recipe import Recipe, load_recipe
    from fmkit.app.registry import Registry, get_registry
    from fmkit.engine.callbacks import Callback
    from fmkit.engine.hints import FixHints
    from fmkit.engine.options import EvalOptions, TrainerOptions
    from fmkit.engine.trainer import Trainer
    from fmkit.errors import FmkitError
    from fmkit.flow.adapter import TensorModel
    from fmkit.flow.couplings import Coupling, ExactOTCoupling, GivenCoupling, IndependentCoupling, SinkhornCoupling
    from fmkit.flow.data import DataInfo, Dataset, FieldInfo, TensorDataset
    from fmkit.flow.guidance import ClassifierFreeGuidance
    from fmkit.flow.likelihood import log_likelihood
    from fmkit.flow.objectives import CFMObjective, MeanFlowObjective
    from fmkit.flow.paths import (
        AffinePath,
        CondOTScheduler,
        CosineScheduler,
        DiscretePath,
        PathSample,
        PolynomialScheduler,
        ProbPath,
        Scheduler,
        SchedulerOutput,
        StatePath,
        VPScheduler,
    )
    from fmkit.flow.sampling import generate
    from fmkit.flow.solvers import AdaptiveSolver, FixedStepSolver, MeanFlowSolver, Solution, Solver
    from fmkit.flow.sources import CategoricalSource, GaussianSource, Source, StateSource
