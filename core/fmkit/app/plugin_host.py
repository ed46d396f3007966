"""The plugin host: the pluggy plugin manager and the plugins in it, loaded so that a broken one never
stops the others.

It registers the built-in plugin, imports the entry points of group ``fmkit`` lazily (as
``FMKIT_PLUGINS`` / ``FMKIT_DISABLE_PLUGINS`` select them), lets plugins declare kinds of their own
(``register_hookspecs``) before anyone's hooks are checked, calls a hook's implementations one
plugin at a time, and sets aside a plugin that fails (:class:`fmkit.app.plugin_records.BrokenPlugin`).
What the hooks register is not its business: :mod:`fmkit.app.components` keeps that.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from fmkit._version import __version__
from fmkit.app import hookspecs
from fmkit.app.plugin_records import (
    BrokenPlugin,
    PluginInfo,
    Selection,
    broken_from_exception,
    distribution_of,
    entry_point_dist,
    hook_problems,
    short_path,
)
from fmkit.errors import FmkitError, RegistryError, note

ENTRY_POINT_GROUP = "fmkit"
BUILTIN = "fmkit.app.builtin.plugin"


def _nothing(plugin: str) -> None:
    pass


class PluginHost:
    """The plugins of one registry: built-in, installed (entry points) and added in-process."""

    def __init__(self, *, builtins: bool = True, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("fmkit")
        self.pm.add_hookspecs(hookspecs)
        if builtins:
            self.pm.register(importlib.import_module(BUILTIN), name=BUILTIN)
        self._load_entry_points = entry_points
        self._entry_points_loaded = False
        self._named: set[int] = set()  # plugins given a name in add_plugin: kept when also installed
        self._unchecked: list[object] = []  # plugins added in-process whose hooks are not checked yet
        self._specs_declared: set[str] = set()
        self._declared_kinds: list[str] = []
        self._dists: dict[str, tuple[str | None, str | None]] = {}  # installed plugins: (distribution, version)
        #: plugins set aside (failed import, bad hooks, a hook that raised), by name
        self.broken: dict[str, BrokenPlugin] = {}
        #: installed plugins not loaded because of FMKIT_PLUGINS / FMKIT_DISABLE_PLUGINS: name -> why
        self.disabled: dict[str, str] = {}
        #: grows whenever the set of working plugins changes (what they registered must be collected again)
        self.changes = 0

    # -- which plugins ------------------------------------------------------------------------
    def add_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object or module (anything with ``@hookimpl`` functions); one that is
        already registered (say, also loaded from its entry point) is left as it is. Its hooks are
        checked by the next :meth:`ready` (misspelled or unmarked hooks are a RegistryError then)."""
        if self.pm.is_registered(plugin):
            return
        try:
            self.pm.register(plugin, name=name)
        except ValueError as exc:  # pluggy: the name is taken by another plugin object
            shown = name or getattr(plugin, "__name__", None) or type(plugin).__name__
            raise RegistryError(f"cannot add plugin {shown!r}: {exc}",
                                fix="give it another name, e.g. add_plugin(obj, name='my_plugin')") from None
        if name is not None:
            self._named.add(id(plugin))
        self._unchecked.append(plugin)
        self.changes += 1

    def ready(self) -> None:
        """Entry points loaded, plugin kinds declared and every plugin's hooks checked: what a lookup needs first."""
        self._ensure_entry_points()
        if not self._unchecked:
            return
        self._declare_hookspecs()
        for plugin in list(self._unchecked):
            if self.pm.is_registered(plugin):
                problems = hook_problems(self.pm, plugin)
                if problems:
                    name = self.pm.get_name(plugin)
                    raise RegistryError(f"plugin {name!r}: " + "; ".join(problems), where=f"plugin {name!r}",
                                        fix="mark each hook with @hookimpl (from fmkit.plugin) and name it as a hook "
                                            "specification does (register_models, register_datasets, ...)")
            self._unchecked.remove(plugin)

    def kinds(self) -> tuple[str, ...]:
        """The component kinds: the core's, then those plugins declared (``register_hookspecs``)."""
        self.ready()
        return (*hookspecs.KINDS, *self._declared_kinds)

    def names(self) -> list[str]:
        self.ready()
        return [name for name, _ in self.pm.list_name_plugin()]

    # -- calling hooks ------------------------------------------------------------------------
    def call_each(self, hook: str, call: Callable[[Any], None], *, undo: Callable[[str], None] = _nothing,
                  raise_in_process: bool = True) -> None:
        """``call(impl)`` for each implementation of ``hook``, in pluggy's call order (the plugin registered
        last first), skipping plugins set aside. A plugin whose call raises is set aside
        (``undo(plugin_name)`` first takes back what it did), except, with ``raise_in_process``, for an
        fmkit error of a plugin added in-process rather than installed: that is raised, for the test of
        the plugin's author to see."""
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            if impl.plugin_name in self.broken:
                continue
            try:
                call(impl)
            except FmkitError as exc:
                if raise_in_process and impl.plugin_name not in self._dists:
                    raise
                undo(impl.plugin_name)
                self._set_aside(impl, hook, exc)
            except Exception as exc:  # the plugin's own bug: set it aside, keep the others
                undo(impl.plugin_name)
                self._set_aside(impl, hook, exc)

    def _set_aside(self, impl: Any, stage: str, exc: BaseException) -> None:
        """Record that ``impl``'s plugin failed at ``stage`` (a hook of its that raised) and say so once."""
        target = getattr(impl.plugin, "__name__", type(impl.plugin).__module__)
        dist = self.distribution(impl.plugin_name, impl.plugin)
        b = broken_from_exception(impl.plugin_name, target, stage, exc, dist=dist)
        self.broken[impl.plugin_name] = b
        note(b.summary(), fix=b.fix())
        self.changes += 1

    def _declare_hookspecs(self) -> None:
        """Let plugins declare their own hooks (``register_hookspecs``) before hooks are checked; a
        plugin whose declaration raises is set aside."""
        for impl in self.pm.hook.register_hookspecs.get_hookimpls():
            if impl.plugin_name in self._specs_declared:
                continue
            self._specs_declared.add(impl.plugin_name)
            try:
                impl.function(register=self._add_hookspecs)
            except Exception as exc:
                self._set_aside(impl, "register_hookspecs", exc)
                self.pm.unregister(impl.plugin)

    def _add_hookspecs(self, specs: object) -> None:
        """Add ``specs``' hooks; each new ``register_<kind>(register)`` hook is a kind of components."""
        names = [n for n in dir(specs) if self.pm.parse_hookspec_opts(specs, n) is not None]
        if all(getattr(getattr(self.pm.hook, n, None), "spec", None) is not None for n in names):
            return
        self.pm.add_hookspecs(specs)
        for n in names:
            caller = getattr(self.pm.hook, n)
            kind = n.removeprefix("register_")
            if n != kind and tuple(caller.spec.argnames) == ("register",) and kind not in self._declared_kinds:
                self._declared_kinds.append(kind)

    # -- entry points -------------------------------------------------------------------------
    def _ensure_entry_points(self) -> None:
        if self._entry_points_loaded or not self._load_entry_points:
            return
        self._entry_points_loaded = True
        self._load(entry_points(group=ENTRY_POINT_GROUP))
        self.changes += 1

    def _load(self, eps: Iterable[EntryPoint]) -> None:
        """Import and register the selected entry points ``eps``. One that fails to import, that pluggy
        refuses, or whose hooks are misspelled or unmarked is set aside (reported once, as a note) and
        the rest load; a lookup of a name only it could give names it. Selections that select nothing
        (a typo in ``FMKIT_PLUGINS``) are notes too."""
        selection = Selection.from_env()
        eps = list(eps)
        loaded: list[tuple[str, object, str, tuple[str | None, str | None]]] = []
        for ep in eps:
            why = selection.why_not(ep.name)
            if why is not None:
                self.disabled[ep.name] = why
                continue
            if self.pm.has_plugin(ep.name) or ep.name in self.broken:
                continue
            dist = entry_point_dist(ep)
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                self.broken[ep.name] = broken_from_exception(ep.name, ep.value, "import", exc, dist=dist)
                continue
            self._dists[ep.name] = dist
            # a plugin added in-process (Registry.fresh(plugins=[module])) that is installed too: it
            # keeps its registration, under its entry point's name (as the CLI names it in errors)
            if self.pm.is_registered(module):
                if id(module) not in self._named and self.pm.get_name(module) != ep.name:
                    self.pm.unregister(module)
                    self.pm.register(module, name=ep.name)
            elif all(m is not module for _, m, _, _ in loaded):
                loaded.append((ep.name, module, ep.value, dist))
        registered = []
        for name, module, target, dist in loaded:
            try:
                self.pm.register(module, name=name)
                registered.append((name, module, target, dist))
            except Exception as exc:  # pluggy refused it (a name clash, a malformed hook implementation)
                self.broken[name] = broken_from_exception(name, target, "register", exc, dist=dist)
        self._declare_hookspecs()
        for name, module, target, dist in registered:
            problems = [] if name in self.broken else hook_problems(self.pm, module)
            if problems:
                self.pm.unregister(module)
                where = getattr(module, "__file__", None)
                self.broken[name] = BrokenPlugin(name, target, "hooks", "; ".join(problems),
                                                 short_path(where) if where else None, "", *dist)
        for b in self.broken.values():
            note(b.summary(), fix=b.fix())
        for text in selection.notes({ep.name for ep in eps}):
            note(text)

    # -- who is who ---------------------------------------------------------------------------
    def distribution(self, name: str, obj: object = None) -> tuple[str | None, str | None]:
        """(distribution, version) of plugin ``name`` (``obj``: the plugin object, when not installed)."""
        if name in self._dists:
            return self._dists[name]
        if name == BUILTIN:
            return "fmkit", __version__
        return distribution_of(obj if obj is not None else self.pm.get_plugin(name))

    def infos(self) -> list[PluginInfo]:
        """Every loaded plugin with its distribution, version and hooks (one registering nothing too)."""
        self.ready()
        out = []
        for name, obj in self.pm.list_name_plugin():
            hooks = tuple(sorted(c.name for c in self.pm.get_hookcallers(obj) or []))
            module = obj.__name__ if inspect.ismodule(obj) else type(obj).__module__ + "." + type(obj).__qualname__
            out.append(PluginInfo(name, module, *self.distribution(name, obj), hooks))
        return out

    def unavailable(self) -> list[str]:
        """One line per plugin that is set aside or disabled, for an unknown name's error: it may be the
        plugin that provides it."""
        lines = [f"plugin {b.name!r} could not be loaded ({b.stage}: {b.error}"
                 + (f", at {b.location}" if b.location else "") + ") and may provide it"
                 for b in self.broken.values()]
        return lines + [f"plugin {n!r} is installed but disabled ({why}) and may provide it"
                        for n, why in sorted(self.disabled.items())]

    def packages(self) -> dict[str, str]:
        """Top-level package -> plugin name for every plugin object that is not part of fmkit itself."""
        out: dict[str, str] = {}
        for name, obj in self.pm.list_name_plugin():
            module = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None) or type(obj).__module__
            root = str(module).split(".")[0]
            if root not in ("fmkit", "__main__", "builtins"):
                out.setdefault(root, name)
        return out
