"""fmkit: conditional flow matching for every data modality.

The four contracts — :mod:`fmkit.flow.paths`, :mod:`fmkit.flow.couplings` (+ :mod:`fmkit.flow.sources`),
models (``nn.Module`` ``forward(x_t, t, cond)``) and :mod:`fmkit.flow.solvers` — the registry that
plugins fill through pluggy hooks (:mod:`fmkit.app.registry`), and the one :class:`Trainer`.
Everything works on bare tensors as well as on states (dicts of named fields).
"""

from fmkit.app.builtin import metrics  # noqa: F401 - `fmkit.app.builtin.metrics.W2Metric()` after a plain `import fmkit`
from fmkit.flow.couplings import Coupling, ExactOTCoupling, IndependentCoupling, SinkhornCoupling
from fmkit.flow.data import DataInfo, Dataset, FieldInfo, TensorDataset
from fmkit.errors import FmkitError
from fmkit.flow.guidance import ClassifierFreeGuidance
from fmkit.app.hookspecs import hookimpl
from fmkit.flow.likelihood import log_likelihood
from fmkit.flow.adapter import TensorModel
from fmkit.flow.paths import (AffinePath, CondOTScheduler, CosineScheduler, DiscretePath, PathSample,
                         PolynomialScheduler, ProbPath, Scheduler, StatePath, VPScheduler)
from fmkit.app.recipe import EvalOptions, Recipe, TrainerOptions, load_recipe
from fmkit.app.registry import Registry, get_registry
from fmkit.flow.sampling import generate
from fmkit.flow.solvers import AdaptiveSolver, FixedStepSolver, Solution, Solver
from fmkit.flow.sources import CategoricalSource, GaussianSource, Source, StateSource
from fmkit.engine.trainer import Callback, Trainer

__version__ = "0.1.0"

__all__ = [
    "AdaptiveSolver", "AffinePath", "Callback", "CategoricalSource", "ClassifierFreeGuidance", "CondOTScheduler",
    "CosineScheduler", "Coupling", "DataInfo", "Dataset", "DiscretePath", "EvalOptions", "ExactOTCoupling",
    "FieldInfo", "FixedStepSolver", "FmkitError", "GaussianSource", "IndependentCoupling", "PathSample",
    "PolynomialScheduler", "ProbPath", "Recipe", "Registry", "Scheduler", "SinkhornCoupling", "Solution", "Solver",
    "Source",
    "StatePath", "StateSource", "TensorDataset", "TensorModel", "Trainer", "TrainerOptions", "VPScheduler",
    "generate", "get_registry", "hookimpl", "load_recipe", "log_likelihood",
]
