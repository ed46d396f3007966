"""What the plugin host knows of each plugin, and how it finds out: records and diagnostics.

A plugin whose import fails, whose hooks are misspelled or unmarked, or whose ``register_*`` hook
raises is set aside as a :class:`BrokenPlugin` (its error, file:line and traceback kept): the rest
load, ``fmkit plugins`` reports it, and only a recipe that names one of its components fails,
naming it. :class:`PluginInfo` is what ``fmkit plugins`` shows and what a run records as
provenance: the plugin's distribution, version and the hooks it implements. The selection by
environment variable (``FMKIT_PLUGINS``, ``FMKIT_DISABLE_PLUGINS``) is read here too.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import os
import sys
import sysconfig
import traceback
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pluggy


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
    """The record of ``exc`` raised while loading plugin ``name``.

    Args:
        name: the plugin's name (its entry point's, or the name it was registered under).
        target: where it lives: its module path (``module`` or ``module:object``).
        stage: the stage that failed (``import``, ``hooks``, ``register`` or ``register_<kind>``).
        exc: the exception raised.
        dist: the distribution that installed the plugin and its version; None for either unknown.

    Returns:
        The plugin set aside, with the error, its file:line in the plugin's code and the traceback.
    """
    return BrokenPlugin(name, target, stage, f"{type(exc).__name__}: {exc}", error_location(exc, target),
                        "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), *dist)


def error_location(exc: BaseException, target: str) -> str | None:
    """``file:line`` of the innermost traceback frame inside the plugin's top-level package (for a
    SyntaxError, the offending line itself), else of the innermost frame outside the standard
    library, fmkit and pluggy; None when there is none (the plugin's module itself is missing)."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{short_path(exc.filename)}:{exc.lineno}"
    root = target.split(":")[0].split(".")[0]
    frames = [(f, n) for f, n in traceback.walk_tb(exc.__traceback__) if not f.f_code.co_filename.startswith("<")]
    for frame, lineno in reversed(frames):
        if str(frame.f_globals.get("__name__", "")).split(".")[0] == root:
            return f"{short_path(frame.f_code.co_filename)}:{lineno}"
    stdlib = sysconfig.get_paths()["stdlib"]
    for frame, lineno in reversed(frames):
        module = str(frame.f_globals.get("__name__", ""))
        if not frame.f_code.co_filename.startswith(stdlib) and module.split(".")[0] not in ("fmkit", "pluggy"):
            return f"{short_path(frame.f_code.co_filename)}:{lineno}"
    return None


def short_path(filename: str) -> str:
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
    ``register_model``) and ``register_*`` functions that lack the ``@hookimpl`` marker of :mod:`fmkit.plugin`."""
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
            problems.append(f"its function {attr!r} is not marked with @hookimpl (from fmkit.plugin), so fmkit never "
                            "calls it" + ("" if close == attr else f" (and the hook is named {close!r})"))
    return problems


def entry_point_dist(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    """The (distribution, version) that installed entry point ``ep``."""
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


ALLOW, BLOCK = "FMKIT_PLUGINS", "FMKIT_DISABLE_PLUGINS"


@dataclass(frozen=True)
class Selection:
    """Which installed plugins load: ``FMKIT_PLUGINS`` is an allow list of entry-point names (``none``
    loads none), ``FMKIT_DISABLE_PLUGINS`` a block list."""

    allow: list[str] | None
    block: frozenset[str]
    raw_allow: str | None = None

    @classmethod
    def from_env(cls) -> Selection:
        return cls(_env_list(ALLOW), frozenset(_env_list(BLOCK) or ()), os.environ.get(ALLOW))

    def why_not(self, name: str) -> str | None:
        """Why the installed plugin ``name`` is not loaded; None when it is."""
        if self.allow is not None and name not in self.allow:
            return f"it is not in {ALLOW}"
        if name in self.block:
            return f"{BLOCK} names it"
        return None

    def notes(self, installed: set[str]) -> list[str]:
        """Notes for selections that select nothing: a typo in FMKIT_PLUGINS, an empty value, a disabled
        name that is not installed."""
        notes = []
        if self.raw_allow is not None and not self.raw_allow.strip():
            notes.append(f"{ALLOW} is set but empty, so no plugin is loaded (write {ALLOW}=none to say so, or "
                         "unset it to load every installed plugin)")
        for name in sorted(set(self.allow or ()) - installed - {"none"}):
            notes.append(_not_installed(ALLOW, name, installed))
        for name in sorted(self.block - installed):
            notes.append(_not_installed(BLOCK, name, installed))
        return notes


def _not_installed(var: str, name: str, installed: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(installed), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"{var} names {name!r}, which is not an installed plugin: {hint}installed: "
            f"{', '.join(sorted(installed)) or '(none)'}")


def _env_list(var: str) -> list[str] | None:
    val = os.environ.get(var)
    if val is None:
        return None
    val = val.strip()
    if val.lower() in ("", "none"):
        return []
    return [v.strip() for v in val.split(",") if v.strip()]
