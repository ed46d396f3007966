"""fmkit: conditional flow matching for every data modality.

The four contracts — :mod:`fmkit.paths`, :mod:`fmkit.couplings` (+ :mod:`fmkit.sources`),
models (``nn.Module`` ``forward(x_t, t, cond)``) and :mod:`fmkit.solvers` — the registry that
plugins fill through pluggy hooks (:mod:`fmkit.registry`), and the one :class:`Trainer`.
Everything works on bare tensors as well as on states (dicts of named fields).
"""

from fmkit import metrics  # noqa: F401 - `fmkit.metrics.W2Metric()` after a plain `import fmkit`
from fmkit.couplings import Coupling, ExactOTCoupling, GivenCoupling, IndependentCoupling, SinkhornCoupling
from fmkit.data import DataInfo, Dataset, FieldInfo, TensorDataset
from fmkit.errors import FmkitError
from fmkit.guidance import ClassifierFreeGuidance
from fmkit.hookspecs import hookimpl
from fmkit.likelihood import log_likelihood
from fmkit.models.adapter import TensorModel
from fmkit.paths import (AffinePath, CondOTScheduler, CosineScheduler, DiscretePath, PathSample,
                         PolynomialScheduler, ProbPath, Scheduler, StatePath, VPScheduler)
from fmkit.recipe import EvalOptions, Recipe, TrainerOptions, load_recipe
from fmkit.registry import Registry, get_registry
from fmkit.sampling import generate
from fmkit.solvers import AdaptiveSolver, FixedStepSolver, Solution, Solver
from fmkit.sources import CategoricalSource, GaussianSource, Source, StateSource
from fmkit.trainer import Callback, Trainer

__version__ = "0.1.0"

__all__ = [
    "AdaptiveSolver", "AffinePath", "Callback", "CategoricalSource", "ClassifierFreeGuidance", "CondOTScheduler",
    "CosineScheduler", "Coupling", "DataInfo", "Dataset", "DiscretePath", "EvalOptions", "ExactOTCoupling",
    "FieldInfo", "FixedStepSolver", "FmkitError", "GaussianSource", "GivenCoupling", "IndependentCoupling", "PathSample",
    "PolynomialScheduler", "ProbPath", "Recipe", "Registry", "Scheduler", "SinkhornCoupling", "Solution", "Solver",
    "Source",
    "StatePath", "StateSource", "TensorDataset", "TensorModel", "Trainer", "TrainerOptions", "VPScheduler",
    "generate", "get_registry", "hookimpl", "load_recipe", "log_likelihood",
]
