"""YAML recipes validated by pydantic.

A recipe names every component by its registry key with its options inline::

    data:    {name: moons, n: 100000}
    model:   {name: mlp, hidden: 256}
    path:    {name: condot, fields: {atoms: {name: discrete}}}   # per-field overrides
    source:  {name: eight_gaussians}
    coupling: {name: exact_ot}
    solver:  {name: euler, steps: 100}
    objective: {name: cfm}                                    # the loss (default; meanflow: one-step)
    trainer: {steps: 3000, batch_size: 256, lr: 1e-3}
    eval:    {every: 1000, num_samples: 2000, metrics: [{name: w2}], writers: [{name: scatter}]}

Validation happens in two passes, both before training: the recipe's own structure, then each
component's options against the options model its plugin registered. Errors name the key path.
Recipes can only name registered components, never import paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fmkit.app.component_options import format_validation_error
from fmkit.app.registry import Registry, get_registry
from fmkit.app.yaml_io import (  # noqa: F401 - MAX_RECIPE_VALUES, parse_yaml, read_yaml: recipe's own names
    MAX_RECIPE_VALUES,
    AliasBomb,
    alias_error,
    load_bounded,
    parse_yaml,
    read_yaml,
)
from fmkit.engine.options import (  # noqa: F401 - the sections a recipe composes
    MAX_STEPS,
    CFMObjectiveOptions,
    EvalOptions,
    ObjectiveOptions,
    TrainerOptions,
)
from fmkit.errors import FmkitError, RecipeError


class Component(BaseModel):
    """``{name: <registry key>, ...options}``; options are checked against the registry later."""

    model_config = ConfigDict(extra="allow")
    name: str

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **(self.model_extra or {})}


class FieldedComponent(Component):
    """A component with per-field overrides: ``{name: ..., fields: {pos: {name: ...}}}``."""

    fields: dict[str, Component] = Field(default_factory=dict)


class EvalSection(EvalOptions):
    """The recipe's ``eval:`` section: the engine's :class:`EvalOptions` plus the metrics and writers to build."""

    metrics: list[Component] = Field(default_factory=list)
    writers: list[Component] = Field(default_factory=list)


class TrainerSection(TrainerOptions):
    """The recipe's ``trainer:`` section: the engine's :class:`TrainerOptions` plus the loggers to build."""

    loggers: list[Component] = Field(
        [], description="experiment trackers that get the scalars, the recipe and sample files besides "
        "metrics.csv (always written): names or {name: ..., options}, e.g. [tensorboard, {name: wandb, project: x}]")

    @field_validator("loggers", mode="before")
    @classmethod
    def _names_alone(cls, value: Any) -> Any:
        """``[tensorboard, {name: wandb, ...}]``: a bare name is a logger with its default options."""
        return [{"name": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("run", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$", description="run name (file-safe)")
    seed: int = Field(0, ge=0, lt=2**63, description="seed of everything random in the run (a 64-bit integer)")
    cpu_alternative: str | None = Field(None, description="for a GPU-sized recipe: the recipe to train instead on a "
                                        "machine without a GPU (a shipped recipe's name or a path); `fmkit train` "
                                        "says so up front there")
    data: Component
    model: Component
    path: FieldedComponent = Field(default_factory=lambda: FieldedComponent(name="condot"))
    source: FieldedComponent = Field(default_factory=lambda: FieldedComponent(name="gaussian"))
    coupling: Component = Field(default_factory=lambda: Component(name="independent"))
    solver: Component = Field(default_factory=lambda: Component(name="euler", steps=100))
    objective: ObjectiveOptions = Field(default_factory=CFMObjectiveOptions,
                                        description="the loss: {name: cfm} (conditional flow matching)")
    trainer: TrainerSection = Field(default_factory=TrainerSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    callbacks: list[Component] = Field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-able data; unlike pydantic's JSON mode this keeps inf/nan (YAML has .inf/.nan)."""
        out = _plain(self.model_dump(mode="python"))
        for section in ("path", "source"):  # per-field overrides after the section's own options
            out[section]["fields"] = out[section].pop("fields")
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


#: renamed recipe keys, by section: ``{section: {old: new}}``. A file may hold either name (the options
#: model reads the old one); ``--set`` of either sets the new name, replacing the file's old one.
RENAMED_KEYS: dict[str, Mapping[str, str]] = {"eval": EvalOptions.RENAMED}


def _current_names(parts: list[str]) -> list[str]:
    """An override's key path under today's names (``eval.batch_size`` -> ``eval.chunk_size``)."""
    renamed = RENAMED_KEYS.get(parts[0], {}) if len(parts) == 2 else {}
    return [parts[0], renamed[parts[1]]] if parts[-1] in renamed else parts


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (value parsed as YAML) to a recipe mapping, in place; a renamed
    key (:data:`RENAMED_KEYS`) is set under its new name, whichever name the override and the file use."""
    for ov in overrides:
        if not isinstance(ov, str) or "=" not in ov:
            raise RecipeError(f"override {ov!r} is not of the form key.path=value", where="--set",
                              fix="write e.g. --set trainer.steps=200")
        key, _, raw = ov.partition("=")
        parts = key.strip().split(".")
        if not key.strip() or any(not p for p in parts):
            raise RecipeError(f"override {ov!r} has an empty key", where="--set",
                              fix="write e.g. --set trainer.lr=1e-4")
        parts = _current_names(parts)
        try:
            value = load_bounded(raw) if raw.strip() else ""
        except AliasBomb as exc:
            raise alias_error(exc, "--set") from None
        except (yaml.YAMLError, RecursionError):
            value = raw
        node: Any = data
        for i, p in enumerate(parts[:-1]):
            here = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = _list_item(node, p, here)
                continue
            if not isinstance(node, dict):
                raise RecipeError(f"cannot set {key!r}: {'.'.join(parts[:i]) or 'the recipe'} is not a mapping",
                                  where="--set", fix=f"set {'.'.join(parts[:i])} itself, not a key below it")
            if node.get(p) is None:
                node[p] = {}
            node = node[p]
        last = parts[-1]
        if isinstance(node, list):
            idx = _list_index(node, last, key)
            node[idx] = value
        elif isinstance(node, dict):
            if len(parts) == 2:  # the file's old name of this key goes: the override replaces its value
                for gone in [o for o, n in RENAMED_KEYS.get(parts[0], {}).items() if n == last]:
                    node.pop(gone, None)
            node[last] = value
        else:
            raise RecipeError(f"cannot set {key!r}: {'.'.join(parts[:-1])} is a value, not a mapping", where="--set",
                              fix=f"set {'.'.join(parts[:-1])} itself, e.g. --set {'.'.join(parts[:-1])}=<value>")
    return data


def _list_index(node: list, p: str, where: str) -> int:
    if not p.lstrip("-").isdecimal() or not -len(node) <= int(p) < len(node):
        raise RecipeError(f"{where!r}: {p!r} is not an index of a list of {len(node)}", where="--set",
                          fix=f"use an index from 0 to {len(node) - 1}" if node else "the list is empty: set the "
                          "whole list, e.g. --set eval.metrics='[{name: w2}]'")
    return int(p)


def _list_item(node: list, p: str, where: str) -> Any:
    return node[_list_index(node, p, where)]


def validate(data: Mapping[str, Any], registry: Registry | None = None, where: str = "<recipe>") -> Recipe:
    """Structure, then every component's options against its registry entry."""
    data = dict(data)
    objective = data.get("objective")
    if isinstance(objective, Mapping) and objective.get("name") == "meanflow" and data.get("solver") is None:
        data["solver"] = {"name": "meanflow", "steps": 1}  # a MeanFlow run samples by its jumps unless told
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(f"recipe {where} does not validate:\n" + format_validation_error(exc, "", Recipe).replace(
            "  - .", "  - "), where=where, fix="see docs/recipes.md for every section and option") from None
    check_objective(recipe)
    check_components(recipe, registry or get_registry())
    return recipe


def check_objective(recipe: Recipe) -> None:
    """The solver and guidance a recipe samples with against the objective it trains: the meanflow
    solver jumps with the average velocity that only objective meanflow trains, and a jump takes no
    sampling guidance (MeanFlow folds guidance into its training target), unless the model takes the
    scale as an input (``objective.guidance_range``)."""
    if recipe.solver.name != "meanflow":
        return
    if recipe.objective.name != "meanflow":
        raise RecipeError(f"solver meanflow jumps with the average velocity u(z, r, t), which objective "
                          f"{recipe.objective.name!r} does not train", where="solver.name",
                          fix="train with `objective: {name: meanflow}` (and a model with two times, e.g. "
                              "`model: {name: mlp, two_times: true}`), or pick an ODE solver (euler, heun, ...)")
    if recipe.eval.guidance_scale is not None and getattr(recipe.objective, "guidance_range", None) is None:
        raise RecipeError("eval.guidance_scale guides an ODE's velocity at sampling; a MeanFlow jump has its "
                          "guidance folded into training", where="eval.guidance_scale",
                          fix="set objective.guidance_scale (with trainer.cond_dropout) and drop "
                              "eval.guidance_scale, or train the scale as a model input: objective.guidance_range "
                              "with `guidance_input: true` in the model section")


def check_components(recipe: Recipe, registry: Registry) -> None:
    """Validate each component's name and options, collecting all problems into one error; then
    store each component's full options (every default filled in) in ``recipe``, so the resolved
    recipe (``recipe show``, a run's recipe.yaml) says exactly what was built."""
    problems: list[str] = []
    resolved: list[tuple[Component, dict[str, Any]]] = []

    def check(kind: str, comp: Component, where: str) -> None:
        try:
            resolved.append((comp, registry.resolve(kind, comp.spec(), where=where)))
        except FmkitError as exc:
            problems.append(exc.render())

    for kind, comp, where in components(recipe):
        check(kind, comp, where)
    if problems:
        raise RecipeError("recipe has invalid components:\n" + "\n".join(problems))
    for comp, spec in resolved:
        comp.__pydantic_extra__ = {k: v for k, v in spec.items() if k != "name"}


def components(recipe: Recipe) -> list[tuple[str, Component, str]]:
    """Every component of ``recipe`` as (kind, component, key path), per-field overrides included."""
    out: list[tuple[str, Component, str]] = [("datasets", recipe.data, "data"), ("models", recipe.model, "model")]
    for section, kind in (("path", "paths"), ("source", "sources")):
        comp: FieldedComponent = getattr(recipe, section)
        out.append((kind, comp, section))
        out += [(kind, sub, f"{section}.fields.{f}") for f, sub in comp.fields.items()]
    out += [("couplings", recipe.coupling, "coupling"), ("solvers", recipe.solver, "solver")]
    out += [("metrics", m, f"eval.metrics.{i}") for i, m in enumerate(recipe.eval.metrics)]
    out += [("writers", w, f"eval.writers.{i}") for i, w in enumerate(recipe.eval.writers)]
    out += [("callbacks", c, f"callbacks.{i}") for i, c in enumerate(recipe.callbacks)]
    out += [("loggers", lg, f"trainer.loggers.{i}") for i, lg in enumerate(recipe.trainer.loggers)]
    return out


def load_recipe(path: str | Path | Mapping[str, Any], overrides: Iterable[str] = (),
                registry: Registry | None = None) -> Recipe:
    """Read, override and fully validate a recipe: a file, a recipe a plugin ships (by its name, when no
    such file exists), or the recipe's data itself as a mapping."""
    if isinstance(path, Mapping):
        data, where = dict(path), "<recipe>"
    else:
        path = find_recipe(path, registry or get_registry())
        data, where = read_yaml(path), str(path)
    apply_overrides(data, overrides)
    return validate(data, registry, where=where)


def used_components(recipe: Recipe, registry: Registry) -> list[str]:
    """``"<kind>.<name>"`` of every component ``recipe`` uses, those its components' options name
    included (a writer's vocoder): what its run records the provenance of."""
    out: list[str] = []
    for kind, comp, _ in components(recipe):
        out += [u for u in registry.uses(kind, comp.spec()) if u not in out]
    return out


def find_recipe(path: str | Path, registry: Registry) -> Path:
    """``path`` itself when it exists (or looks like a file path), else the recipe a plugin registered
    under that name (``register_recipes``); a name that is neither gets the closest shipped one."""
    p = Path(path)
    if p.exists() or p.suffix or len(p.parts) != 1:
        return p
    shipped = registry.recipes()
    if str(path) in shipped:
        return shipped[str(path)][0]
    import difflib

    close = difflib.get_close_matches(str(path), sorted(shipped), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    names = ", ".join(sorted(shipped)) or "(none installed)"
    raise RecipeError(f"recipe {str(path)!r} is neither a file nor a recipe shipped by a plugin", where=str(Path.cwd()),
                      fix=f"{hint}pass a recipe file (shipped ones live in recipes/), or one of the plugins' recipes: "
                          f"{names} (`fmkit recipe list`)")


def register_recipe_folder(register: Callable[[str, Path], None], folder: str | Path) -> list[str]:
    """Call a ``register_recipes`` hook's ``register`` for every ``*.yaml`` in ``folder`` (a plugin's
    ``recipes/`` package folder), each under its file name without ``.yaml``, in name order; returns
    the names. A folder that does not exist (a wheel built without its package-data) registers none."""
    names = []
    for p in sorted(Path(folder).glob("*.yaml")):
        register(p.stem, p)
        names.append(p.stem)
    return names
