"""The one import for plugin authors: ``from fmkit.plugin import hookimpl, Dataset, ...``.

Everything a plugin builds on is re-exported here, so a plugin never depends on where a name lives
inside the core (its tests add :mod:`fmkit.testing`):

- hooks: ``hookimpl``, ``hookspec`` (kinds of the plugin's own), ``register_recipe_folder`` (the
  recipes the plugin ships), ``ComponentOf``/``ComponentSpec`` (an option naming a component), and
  ``Registry``/``get_registry``/``load_recipe`` for the plugin's own commands;
- the contracts: ``Dataset``, ``DataInfo``, ``FieldInfo``, ``Source``, ``Coupling``, ``ProbPath``,
  ``Scheduler``, ``Solver`` (implement ``integrate``) and ``Solution``, ``Callback``, ``Metric``,
  ``Writer``, ``Logger`` (with the ``LoggerRun`` it starts);
- the core's components a plugin composes with its own: ``TensorDataset``, ``AffinePath``, ``CondOTScheduler``,
  ``GaussianSource``, ``FixedStepSolver``, ``ClassifierFreeGuidance``;
- helpers: state fields and masks, ``bucketed_batches`` for data of variable sizes (and
  ``examples_of_classes`` for their ``class_template``), the OT
  ``assignment``, ``ctmc_jump``/``takes_step`` for solvers, ``model_velocity`` and the likelihood
  functions, ``frechet_distance``, ``IntervalEmbedding``/``takes_r`` for a model with two times
  (objective meanflow), ``GuidanceEmbedding``/``embed_guidance``/``takes_guidance`` for a model told its
  guidance scale (objective meanflow's ``guidance_range``), ``ProgressBar`` for a plugin's long loop (a bar
  on a terminal, else a heartbeat line),
  ``save_tensors`` for weights a plugin caches (readable as the umask allows, not safetensors' 0600);
- the error classes whose what / where / fix the CLI prints, and ``note`` for a non-fatal one.

The library API for users of the core is ``fmkit`` itself.
"""

from __future__ import annotations

from fmkit.app.component_options import ComponentOf, ComponentSpec
from fmkit.app.hookspecs import hookimpl, hookspec
from fmkit.app.recipe import load_recipe, register_recipe_folder
from fmkit.app.registry import Registry, get_registry
from fmkit.engine.callbacks import Callback, Metric, Writer
from fmkit.engine.files import save_tensors
from fmkit.engine.logger_contract import Logger, LoggerRun
from fmkit.engine.progress import ProgressBar
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
                          TrackerError,
                          TrainingError,
                          note,
)
from fmkit.flow.couplings import Coupling, assignment, require_finite
from fmkit.flow.data import DataInfo, Dataset, FieldInfo, Indices, TensorDataset, bucketed_batches, examples_of_classes
from fmkit.flow.guidance import ClassifierFreeGuidance
from fmkit.flow.likelihood import Dequantization, data_log_likelihood, declared_likelihood, log_likelihood
from fmkit.flow.paths import (
    AffinePath,
    CondOTScheduler,
    PathSample,
    ProbPath,
    Scheduler,
    SchedulerOutput,
    expand_t,
    takes_step,
)
from fmkit.flow.sampling import model_velocity
from fmkit.flow.solvers import FixedStepSolver, Solution, Solver, ctmc_jump
from fmkit.flow.sources import GaussianSource, Source
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
from fmkit.flow.guidance_input import GuidanceEmbedding, embed_guidance, takes_guidance
from fmkit.flow.two_times import IntervalEmbedding, takes_r

__all__ = [
    "AffinePath", "COND", "Callback", "CheckpointError", "ClassifierFreeGuidance", "ComponentOf",
    "ComponentSpec", "CondOTScheduler",
    "ContractError", "Coupling", "DataError", "DataInfo", "Dataset", "DependencyError",
    "Dequantization", "FieldInfo", "FixedStepSolver", "FmkitError", "GaussianSource", "GuidanceEmbedding", "Indices",
    "IntervalEmbedding", "Logger", "LoggerRun", "MASK",
    "MASKS", "Metric", "ModelError", "NonFiniteDataError", "OutputError", "PathSample", "ProbPath", "ProgressBar",
    "RecipeError", "Registry", "RegistryError", "Scheduler", "SchedulerOutput", "Solution", "Solver", "Source",
    "State", "TensorDataset", "TrackerError", "TrainingError", "Writer", "apply_mask", "assignment", "broadcast_mask",
    "bucketed_batches", "count_dims", "ctmc_jump", "data_log_likelihood", "declared_likelihood", "embed_guidance",
    "examples_of_classes",
    "expand_t", "field_mask", "frechet_distance", "get_registry", "hookimpl", "hookspec", "is_categorical",
    "load_recipe", "log_likelihood", "masked_mean_per_example", "model_velocity", "note", "register_recipe_folder",
    "require_finite", "save_tensors", "takes_guidance", "takes_r", "takes_step",
]
