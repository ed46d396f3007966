"""Loading plugins so that a broken one never stops the others, and knowing where each came from.

A plugin whose import fails, whose hooks are misspelled or unmarked, or whose ``register_*`` hook
raises is set aside as a :class:`BrokenPlugin` (its error, file:line and traceback kept): the rest
load, ``fmkit plugins`` reports it, and only a recipe that names one of its components fails,
naming it. :class:`PluginInfo` is what ``fmkit plugins`` shows and what a run records as
provenance: the plugin's distribution, version and the hooks it implements.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import pluggy

from fmkit.errors import RegistryError, note

#: what a component name may be: it is typed in YAML and on command lines
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin: its name, the module it is, the distribution and version that installed it
    (None for a plugin object added in-process from no distribution) and the hooks it implements."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "hooks": list(self.hooks)}


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin set aside: ``stage`` is ``import``, ``hooks`` (unknown or unmarked hooks), ``register``
    (pluggy refused it) or ``register_<kind>`` (that hook raised)."""

    name: str
    target: str
    stage: str
    error: str
    location: str | None
    traceback: str = field(repr=False, default="")
    distribution: str | None = None
    version: str | None = None

    def summary(self) -> str:
        at = f" at {self.location}" if self.location else ""
        return f"plugin {self.name!r} ({self.target}) is not loaded: {self.stage} failed{at}: {self.error}"

    def fix(self) -> str:
        if self.stage == "import" and self.error.startswith(("ModuleNotFoundError", "ImportError")):
            return (f"install what it needs (pip install the missing package), or skip it with "
                    f"FMKIT_DISABLE_PLUGINS={self.name}; `fmkit --debug plugins` shows the traceback")
        return (f"a bug in that plugin's code{f' ({self.location})' if self.location else ''}: fix it or report it "
                f"to its authors, or skip it with FMKIT_DISABLE_PLUGINS={self.name}; `fmkit --debug plugins` "
                "shows the traceback")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def broken_from_exception(name: str, target: str, stage: str, exc: BaseException, *,
                          dist: tuple[str | None, str | None] = (None, None)) -> BrokenPlugin:
    """The record of ``exc`` raised while loading plugin ``name`` (``target``: its module path)."""
    return BrokenPlugin(name, target, stage, f"{type(exc).__name__}: {exc}", error_location(exc, target),
                        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), *dist)


def error_location(exc: BaseException, target: str) -> str | None:
    """``file:line`` of the innermost traceback frame inside the plugin's top-level package (for a
    SyntaxError, the offending line itself), else of the innermost frame outside the standard
    library, fmkit and pluggy; None when there is none (the plugin's module itself is missing)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_short(exc.filename)}:{exc.lineno}"
    root = target.split(":")[0].split(".")[0]
    frames = [(f, n) for f, n in traceback.walk_tb(exc.__traceback__) if not f.f_code.co_filename.startswith("<")]
    for frame, lineno in reversed(frames):
        if str(frame.f_globals.get("__name__", "")).split(".")[0] == root:
            return f"{_short(frame.f_code.co_filename)}:{lineno}"
    stdlib = sysconfig.get_paths()["stdlib"]
    for frame, lineno in reversed(frames):
        module = str(frame.f_globals.get("__name__", ""))
        if not frame.f_code.co_filename.startswith(stdlib) and module.split(".")[0] not in ("fmkit", "pluggy"):
            return f"{_short(frame.f_code.co_filename)}:{lineno}"
    return None


def _short(filename: str) -> str:
    """A file's path from the folder on ``sys.path`` that holds it (``fmkit_acme/plugin.py``)."""
    path = Path(filename).resolve()
    best = None
    for entry in sys.path:
        try:
            rel = path.relative_to(Path(entry or ".").resolve())
        except ValueError:
            continue
        if best is None or len(rel.parts) < len(best.parts):
            best = rel
    return (best or path).as_posix()


def hook_problems(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """What is wrong with ``plugin``'s hooks: implementations of hooks no spec declares (a misspelled
    ``register_model``) and ``register_*`` functions that lack the ``@fmkit.hookimpl`` marker."""
    specs = sorted(name for name, caller in vars(pm.hook).items()
                   if isinstance(caller, pluggy.HookCaller) and caller.spec is not None)
    problems = []
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.spec is None:
            close = difflib.get_close_matches(caller.name, specs, n=1, cutoff=0.6)
            problems.append(f"it implements hook {caller.name!r}, which no hook specification declares"
                            + (f" (did you mean {close[0]!r}?)" if close else f" (hooks: {', '.join(specs)})"))
    for attr in sorted(dir(plugin)):
        if not attr.startswith("register_") or pm.parse_hookimpl_opts(plugin, attr) is not None:
            continue
        fn = getattr(plugin, attr, None)
        if not callable(fn) or (inspect.ismodule(plugin) and getattr(fn, "__module__", None) != plugin.__name__):
            continue  # a name it imported, not its own function
        close = attr if attr in specs else next(iter(difflib.get_close_matches(attr, specs, n=1, cutoff=0.8)), None)
        if close is not None:
            problems.append(f"its function {attr!r} is not marked with @fmkit.hookimpl, so fmkit never calls it"
                            + ("" if close == attr else f" (and the hook is named {close!r})"))
    return problems


def check_name(kind: str, name: object, plugin: str) -> None:
    """Refuse a component name that a recipe could not spell (``"Lab Net!"``)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RegistryError(f"plugin {plugin!r} registers {kind[:-1]} {name!r}: not a valid component name",
                            where=f"hook register_{kind} of plugin {plugin!r}",
                            fix="use letters, digits, '_', '-' or '.', starting with a letter or '_' (at most 64), "
                                "e.g. 'lab_net'")


def own_description(factory: Any) -> str:
    """The first line of ``factory``'s own docstring: not one it inherits from a base class."""
    doc = factory.__dict__.get("__doc__") if inspect.isclass(factory) else getattr(factory, "__doc__", None)
    doc = inspect.cleandoc(doc) if isinstance(doc, str) else ""
    return doc.splitlines()[0] if doc else ""


def entry_point_dist(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return distribution_of_module(ep.value.split(":")[0])
    return dist.metadata["Name"], dist.version


def distribution_of(obj: object) -> tuple[str | None, str | None]:
    """The (distribution, version) that installed the module defining ``obj``."""
    module = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None) or type(obj).__module__
    return distribution_of_module(str(module))


def distribution_of_module(module: str) -> tuple[str | None, str | None]:
    dists = _packages_distributions().get(module.split(".")[0])
    if not dists:
        return None, None
    try:
        return dists[0], importlib.metadata.version(dists[0])
    except importlib.metadata.PackageNotFoundError:
        return dists[0], None


@cache
def _packages_distributions() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def env_notes(allow: list[str] | None, block: set[str], installed: set[str], var_allow: str, var_block: str,
              raw_allow: str | None) -> list[str]:
    """Notes for plugin selections that select nothing: a typo in FMKIT_PLUGINS, an empty value, a
    disabled name that is not installed."""
    notes = []
    if raw_allow is not None and not raw_allow.strip():
        notes.append(f"{var_allow} is set but empty, so no plugin is loaded (write {var_allow}=none to say so, or "
                     "unset it to load every installed plugin)")
    for name in sorted(set(allow or ()) - installed - {"none"}):
        notes.append(_not_installed(var_allow, name, installed))
    for name in sorted(block - installed):
        notes.append(_not_installed(var_block, name, installed))
    return notes


def _not_installed(var: str, name: str, installed: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(installed), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{var} names {name!r}, which is not an installed plugin: {hint}installed: {', '.join(sorted(installed)) or '(none)'}"


class LoadTarget(Protocol):
    """What loading entry points reads and fills of a registry: the :class:`fmkit.app.registry.Registry`,
    described by what this module uses of it (the registry imports this module, not the other way)."""

    pm: pluggy.PluginManager
    broken: dict[str, BrokenPlugin]  # plugins set aside, by name
    disabled: dict[str, str]  # installed plugins not loaded (FMKIT_PLUGINS / FMKIT_DISABLE_PLUGINS): name -> why

    def record_distribution(self, name: str, dist: tuple[str | None, str | None]) -> None: ...
    def named_in_process(self, plugin: object) -> bool: ...
    def declare_hookspecs(self) -> None: ...


def load_entry_points(reg: LoadTarget, eps: Iterable[importlib.metadata.EntryPoint]) -> None:
    """Import and register the allowed entry points ``eps`` into ``reg``. One that fails to import,
    that pluggy refuses, or whose hooks are misspelled or unmarked is set aside in ``reg.broken``
    (reported once, as a note) and the rest load; a lookup of a name only it could give names it.
    Selections that select nothing (a typo in ``FMKIT_PLUGINS``) are notes too."""
    raw_allow = os.environ.get("FMKIT_PLUGINS")
    allow = _env_list("FMKIT_PLUGINS")
    block = set(_env_list("FMKIT_DISABLE_PLUGINS") or [])
    eps = list(eps)
    notes = env_notes(allow, block, {ep.name for ep in eps}, "FMKIT_PLUGINS", "FMKIT_DISABLE_PLUGINS", raw_allow)
    loaded: list[tuple[str, object, str, tuple[str | None, str | None]]] = []
    for ep in eps:
        if allow is not None and ep.name not in allow:
            reg.disabled[ep.name] = "it is not in FMKIT_PLUGINS"
            continue
        if ep.name in block:
            reg.disabled[ep.name] = "FMKIT_DISABLE_PLUGINS names it"
            continue
        if reg.pm.has_plugin(ep.name) or ep.name in reg.broken:
            continue
        dist = entry_point_dist(ep)
        try:
            module = ep.load()
        except Exception as exc:  # a broken plugin must not take the others down
            reg.broken[ep.name] = broken_from_exception(ep.name, ep.value, "import", exc, dist=dist)
            continue
        reg.record_distribution(ep.name, dist)
        # a plugin added in-process (Registry.fresh(plugins=[module])) that is installed too: it
        # keeps its registration, under its entry point's name (as the CLI names it in errors)
        if reg.pm.is_registered(module):
            if not reg.named_in_process(module) and reg.pm.get_name(module) != ep.name:
                reg.pm.unregister(module)
                reg.pm.register(module, name=ep.name)
        elif all(m is not module for _, m, _, _ in loaded):
            loaded.append((ep.name, module, ep.value, dist))
    registered = []
    for name, module, target, dist in loaded:
        try:
            reg.pm.register(module, name=name)
            registered.append((name, module, target, dist))
        except Exception as exc:  # pluggy refused it (a name clash, a malformed hook implementation)
            reg.broken[name] = broken_from_exception(name, target, "register", exc, dist=dist)
    reg.declare_hookspecs()
    for name, module, target, dist in registered:
        if name in reg.broken:
            continue
        problems = hook_problems(reg.pm, module)
        if problems:
            reg.pm.unregister(module)
            where = getattr(module, "__file__", None)
            reg.broken[name] = BrokenPlugin(name, target, "hooks", "; ".join(problems),
                                             _short(where) if where else None, "", *dist)
    for b in reg.broken.values():
        note(b.summary(), fix=b.fix())
    for text in notes:
        note(text)


def _env_list(var: str) -> list[str] | None:
    val = os.environ.get(var)
    if val is None:
        return None
    val = val.strip()
    if val.lower() in ("", "none"):
        return []
    return [v.strip() for v in val.split(",") if v.strip()]
