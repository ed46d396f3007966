"""From a validated recipe to live components, a Trainer and a run directory."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmkit.app.recipe import FieldedComponent, Recipe, read_yaml, used_components, validate
from fmkit.app.registry import Registry, get_registry
from fmkit.engine.callbacks import Callback, TrainerView
from fmkit.engine.checkpoint import has_checkpoint
from fmkit.engine.hints import FixHints
from fmkit.engine.loggers import Loggers
from fmkit.engine.trainer import Trainer
from fmkit.errors import FmkitError, OutputError, RecipeError
from fmkit.flow.couplings import Coupling
from fmkit.flow.data import Dataset
from fmkit.flow.data_check import check_dataset
from fmkit.flow.paths import DiscretePath, StatePath
from fmkit.flow.solvers import Solver
from fmkit.flow.sources import CategoricalSource, StateSource

RECIPE_FILE = "recipe.yaml"
PROVENANCE_FILE = "provenance.json"


@dataclass
class Components:
    dataset: Dataset
    model: nn.Module
    path: StatePath
    source: StateSource
    coupling: Coupling
    solver: Solver
    metrics: dict[str, Any] = field(default_factory=dict)
    writers: dict[str, Any] = field(default_factory=dict)
    callbacks: list[Any] = field(default_factory=list)


def fingerprint(recipe: Recipe) -> dict[str, Any]:
    """What a checkpoint must match to be loaded into this recipe's model: every option of the model,
    the data, and the path and source, per field too, since the model's output means what the path's
    ``prediction`` and the source say. A validated recipe's components hold every option already
    (``recipe.check_components`` filled in the defaults); key order plays no part."""

    def fielded(comp: FieldedComponent) -> dict[str, Any]:
        return {**comp.spec(), "fields": {f: c.spec() for f, c in comp.fields.items()}}

    return {"model": recipe.model.spec(), "data": recipe.data.spec(), "path": fielded(recipe.path),
            "source": fielded(recipe.source)}


def _build(registry: Registry, kind: str, spec: dict[str, Any], where: str, **context: Any) -> Any:
    try:
        return registry.build(kind, spec, where=where, **context)
    except FmkitError:
        raise
    except (ValueError, TypeError) as exc:
        raise RecipeError(f"cannot build {kind[:-1]} {spec.get('name')!r}: {exc}", where=where,
                          fix=f"check this component's options (`fmkit plugins --kind {kind} --options` lists "
                              "them); if they are right, the plugin's factory rejected them: see its "
                              "documentation") from None


def build_components(recipe: Recipe, registry: Registry | None = None, *, with_eval: bool = True) -> Components:
    reg = registry or get_registry()
    torch.manual_seed(recipe.seed)  # model initialisation is a function of the recipe
    dataset = _build(reg, "datasets", recipe.data.spec(), "data")
    entry = reg.get("datasets", recipe.data.name)
    check_dataset(dataset, who=f"dataset {entry.name!r} of plugin {entry.plugin!r}")
    info = dataset.info
    default_path = _build(reg, "paths", recipe.path.spec(), "path", data_info=info)
    per_path = {f: _build(reg, "paths", c.spec(), f"path.fields.{f}", data_info=info)
                for f, c in recipe.path.fields.items()}
    # what the model must output per continuous field ("velocity" or "x1"), for models that ask; a
    # path declares it as its `prediction` attribute (velocity when it has none)
    predictions = {f: getattr(p, "prediction", "velocity") for f in info.fields
                   if not isinstance(p := per_path.get(f, default_path), DiscretePath)}
    model = _build(reg, "models", recipe.model.spec(), "model", data_info=info, predictions=predictions)

    for f, fi in info.fields.items():
        p = per_path.get(f, default_path)
        if fi.categorical and not isinstance(p, DiscretePath):
            raise RecipeError(f"field {f!r} is categorical ({fi.num_classes} classes) but its path "
                              f"{recipe.path.fields[f].name if f in recipe.path.fields else recipe.path.name!r} "
                              f"is continuous", where=f"path.fields.{f}",
                              fix=f"add `path: {{fields: {{{f}: {{name: discrete}}}}}}` to the recipe")
        if not fi.categorical and isinstance(p, DiscretePath):
            raise RecipeError(f"field {f!r} is continuous but its path is the discrete (categorical) path",
                              where=f"path.fields.{f}" if f in recipe.path.fields else "path.name",
                              fix=f"use a continuous path (condot, vp, cosine, polynomial) for {f!r}")
    unknown = set(recipe.path.fields) - set(info.fields)
    if unknown:
        raise RecipeError(f"path.fields names fields the data does not have: {sorted(unknown)}",
                          where="path.fields", fix=f"the data's fields are {sorted(info.fields)}")

    default_source = _build(reg, "sources", recipe.source.spec(), "source", data_info=info)
    per_source = {}
    for f, fi in info.fields.items():
        if f in recipe.source.fields:
            per_source[f] = _build(reg, "sources", recipe.source.fields[f].spec(), f"source.fields.{f}",
                                   data_info=info, field_info=fi, field=f)
        elif fi.categorical:
            p = per_path.get(f, default_path)
            per_source[f] = CategoricalSource(fi.num_classes, p.source_kind)  # the discrete path's own p_0
    unknown = set(recipe.source.fields) - set(info.fields)
    if unknown:
        raise RecipeError(f"source.fields names fields the data does not have: {sorted(unknown)}",
                          where="source.fields", fix=f"the data's fields are {sorted(info.fields)}")

    comps = Components(
        dataset=dataset, model=model, path=StatePath(default_path, per_path),
        source=StateSource(default_source, per_source),
        coupling=_build(reg, "couplings", recipe.coupling.spec(), "coupling", data_info=info),
        solver=_build(reg, "solvers", recipe.solver.spec(), "solver"),
    )
    if with_eval:
        for i, m in enumerate(recipe.eval.metrics):
            comps.metrics[_key(comps.metrics, m.name)] = _build(reg, "metrics", m.spec(), f"eval.metrics.{i}",
                                                                 data_info=info)
        for i, w in enumerate(recipe.eval.writers):
            comps.writers[_key(comps.writers, w.name)] = _build(reg, "writers", w.spec(), f"eval.writers.{i}",
                                                                 data_info=info)
        comps.callbacks = [_build(reg, "callbacks", c.spec(), f"callbacks.{i}", data_info=info)
                           for i, c in enumerate(recipe.callbacks)]
    return comps


def _key(d: dict[str, Any], name: str) -> str:
    k, i = name, 1
    while k in d:
        i += 1
        k = f"{name}_{i}"
    return k


def build_trainer(recipe: Recipe, run_dir: Path | None, registry: Registry | None = None, *,
                  callbacks: Sequence[Callback] = ()) -> Trainer:
    """The recipe's Trainer, writing to ``run_dir`` (nothing is made there before it trains), with ``callbacks``
    before the recipe's own. Its checkpoints record, and its run directory gets in ``provenance.json`` when
    training starts, which plugin, distribution and version made each component."""
    reg = registry or get_registry()
    c = build_components(recipe, reg)
    made_by = provenance(recipe, reg)
    # trainer.loggers: built here, so a tracker whose library is missing is refused before anything runs
    loggers = [_build(reg, "loggers", lg.spec(), f"trainer.loggers.{i}") for i, lg in enumerate(recipe.trainer.loggers)]
    return Trainer(c.model, c.dataset, path=c.path, source=c.source, coupling=c.coupling, solver=c.solver,
                   options=recipe.trainer, eval_options=recipe.eval, metrics=c.metrics, writers=c.writers,
                   callbacks=[*callbacks, *c.callbacks, RecordProvenance(run_dir, made_by)], run_dir=run_dir,
                   seed=recipe.seed, fingerprint=fingerprint(recipe), hints=FixHints.cli(), provenance=made_by,
                   objective=recipe.objective, loggers=Loggers(loggers, config=recipe.to_dict()))


class RecordProvenance(Callback):
    """Writes ``RUN/provenance.json`` as training starts (fresh or resumed: the versions of this session)."""

    def __init__(self, run_dir: Path | None, provenance: dict[str, Any]) -> None:
        self.run_dir, self.provenance = run_dir, provenance

    def on_train_start(self, trainer: TrainerView) -> None:
        if self.run_dir is None or not trainer.is_main:
            return
        from fmkit.engine.files import write_atomic_text

        write_atomic_text(Path(self.run_dir) / PROVENANCE_FILE, json.dumps(self.provenance, indent=2) + "\n")


def provenance(recipe: Recipe, registry: Registry) -> dict[str, Any]:
    """Versions of fmkit, torch and Python, and for each component the recipe uses (those its
    components' options name too), the plugin, distribution and version that registered it
    (``{"components": {"models.unet": {...}}}``)."""
    import platform

    from fmkit._version import __version__

    return {"fmkit": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "components": registry.provenance(used_components(recipe, registry))}


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run worth keeping: a checkpoint (complete or being written). What a
    run that failed or was killed before its first checkpoint left (recipe.yaml, metrics.csv) does
    not count: nothing was trained, and the same --out may be used again."""
    return has_checkpoint(run_dir)


def run_dir_name(recipe: Recipe, out: Path | None) -> Path:
    """Where a new run goes: ``out``, or ``runs/<name>-<time>``; nothing is made (:func:`new_run_dir` makes it)."""
    return Path(out) if out is not None else Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def new_run_dir(recipe: Recipe, out: Path | None) -> Path:
    """Makes :func:`run_dir_name`'s directory with the resolved recipe in it; refuses a directory that already
    holds a run (a checkpoint), and replaces what a run that never reached its first checkpoint left there."""
    run_dir = run_dir_name(recipe, out)
    if holds_run(run_dir):
        raise OutputError(f"{run_dir} already holds a run", where=str(run_dir),
                          fix=f"continue it with `fmkit train --resume {run_dir}`, or pick another --out")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        from fmkit.engine.files import write_atomic_text

        for left in ("metrics.csv", "lineage.json", "stopped.json"):  # a failed start's records are not this run's
            (run_dir / left).unlink(missing_ok=True)
        write_atomic_text(run_dir / RECIPE_FILE, recipe.to_yaml())  # a kill never leaves half a recipe
    except OSError as exc:
        raise OutputError(f"cannot write to the run directory {run_dir}: {exc.strerror or exc}", where=str(run_dir),
                          fix="pass --out with a directory you can write to") from None
    return run_dir


def load_run_recipe(run_dir: Path, overrides: list[str] | None = None, registry: Registry | None = None) -> Recipe:
    """The resolved recipe a run was trained with (plus optional overrides)."""
    from fmkit.app.recipe import apply_overrides

    run_dir = Path(run_dir)
    p = run_dir / RECIPE_FILE
    if not p.is_file():
        what = "does not exist" if not run_dir.exists() else f"is not an fmkit run directory (no {RECIPE_FILE})"
        raise OutputError(f"{run_dir} {what}", where=str(run_dir),
                          fix="pass the directory that `fmkit train` printed (runs/<name>-<time> by default)")
    data = read_yaml(p)
    apply_overrides(data, overrides or [])
    return validate(data, registry, where=str(p))


def safe_output_path(base: Path, name: str) -> Path:
    """``base/name``, refusing names that escape ``base`` (absolute, ``..``, links out)."""
    base = Path(base).resolve()
    target = (base / name).resolve()
    if target != base and base not in target.parents:
        raise OutputError(f"output name {name!r} would write outside {base}", where=name,
                          fix="use a plain file or folder name inside the run directory")
    return target
