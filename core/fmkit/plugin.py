"""The one import for plugin authors: ``from fmkit.plugin import hookimpl, Dataset, ...``.

Everything a plugin builds on — the hook marker, the component contracts (dataset, source,
coupling, path, scheduler, solver, callback), the state helpers for masked fields, the interval
embedding of a model with two times (objective meanflow), and the error
classes whose what/where/fix the CLI prints — is re-exported here, so a plugin never depends on
where a name lives inside the core. The library API for users of the core is ``fmkit`` itself.
"""

from __future__ import annotations

from fmkit.app.hookspecs import hookimpl, hookspec
from fmkit.engine.callbacks import Callback, Metric, Writer
from fmkit.errors import (
                          CheckpointError,
                          ContractError,
                          DataError,
                          DependencyError,
                          FmkitError,
                          ModelError,
                          NonFiniteDataError,
                          OutputError,
                          RecipeError,
                          RegistryError,
                          TrainingError,
                          note,
)
from fmkit.flow.couplings import Coupling, assignment, require_finite
from fmkit.flow.data import DataInfo, Dataset, FieldInfo, Indices
from fmkit.flow.paths import PathSample, ProbPath, Scheduler, expand_t
from fmkit.flow.solvers import Solution, Solver
from fmkit.flow.sources import Source
from fmkit.flow.state import (
                          COND,
                          MASK,
                          MASKS,
                          State,
                          apply_mask,
                          broadcast_mask,
                          count_dims,
                          field_mask,
                          is_categorical,
                          masked_mean_per_example,
)
from fmkit.flow.stats import frechet_distance
from fmkit.flow.two_times import IntervalEmbedding, takes_r

__all__ = [
    "COND", "Callback", "CheckpointError", "ContractError", "Coupling", "DataError", "DataInfo", "Dataset",
    "DependencyError", "FieldInfo", "FmkitError", "Indices", "IntervalEmbedding", "MASK", "MASKS", "Metric",
    "ModelError",
    "NonFiniteDataError", "OutputError", "PathSample", "ProbPath", "RecipeError", "RegistryError", "Scheduler",
    "Solution", "Solver", "Source", "State", "TrainingError", "Writer", "apply_mask", "assignment",
    "broadcast_mask", "count_dims", "expand_t", "field_mask", "frechet_distance", "hookimpl", "hookspec",
    "is_categorical", "masked_mean_per_example", "note", "require_finite", "takes_r",
]
