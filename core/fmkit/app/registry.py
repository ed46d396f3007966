"""The registry: every component kind's table, filled by the plugins of a plugin host.

Two parts with one job each: :class:`fmkit.app.plugin_host.PluginHost` holds the plugins (pluggy
manager, entry points, allow/block lists, set-aside) and :class:`fmkit.app.components.KindTable`
the components of one kind (lookup with the closest name, options validation, building). A kind a
plugin declares (``register_hookspecs``) is served exactly as the core's kinds are.

``get_registry()`` returns the process-wide registry; ``Registry.fresh()`` builds an independent
one (tests, library users). Entry points load lazily, on the first lookup; a plugin that fails to
load is set aside in ``Registry.broken`` and the others work. Environment variables:

- ``FMKIT_PLUGINS``: comma-separated allow list of entry-point names (``none`` loads none);
- ``FMKIT_DISABLE_PLUGINS``: comma-separated block list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from fmkit.app.component_options import component_fields, dump_options
from fmkit.app.components import Entry, KindTable, build, check_name
from fmkit.app.plugin_host import BUILTIN, ENTRY_POINT_GROUP, PluginHost
from fmkit.app.plugin_records import BrokenPlugin, PluginInfo
from fmkit.errors import RegistryError, note

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "Entry", "Registry", "get_registry", "set_registry"]


class Registry:
    """Name -> component lookups for every kind, with the plugin that registered each."""

    def __init__(self, host: PluginHost) -> None:
        self.host = host
        self._tables: dict[str, KindTable] = {}
        self._seen = -1  # host.changes when the tables were collected
        self._missing_recipes: set[tuple[str, str]] = set()

    @classmethod
    def fresh(cls, *, builtins: bool = True, entry_points: bool = True, plugins: Iterable[object] = ()) -> Registry:
        """A new registry: built-in plugin, entry points (lazily) and any extra plugin objects."""
        reg = cls(PluginHost(builtins=builtins, entry_points=entry_points))
        for p in plugins:
            reg.add_plugin(p)
        return reg

    def add_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object or module (anything with ``@hookimpl`` functions); one already
        registered is left as it is. Its hooks are checked at the next lookup."""
        self.host.add_plugin(plugin, name)

    @property
    def pm(self) -> Any:
        """The pluggy plugin manager (for a plugin's own hooks that are not component kinds)."""
        return self.host.pm

    @property
    def broken(self) -> dict[str, BrokenPlugin]:
        """Plugins set aside (failed import, bad hooks, a hook that raised), by name."""
        return self.host.broken

    @property
    def disabled(self) -> dict[str, str]:
        """Installed plugins that FMKIT_PLUGINS / FMKIT_DISABLE_PLUGINS leave out: name -> why."""
        return self.host.disabled

    # -- components ---------------------------------------------------------------------------
    def kinds(self) -> tuple[str, ...]:
        """Every component kind: the core's (paths, models, ...) and those plugins declared."""
        return self.host.kinds()

    def _table(self, kind: str, where: str | None = None) -> KindTable:
        kinds = self.kinds()
        if kind not in kinds:
            raise RegistryError(f"unknown component kind {kind!r}", where=where,
                                fix=f"use one of: {', '.join(kinds)} (a plugin declares a kind of its own in its "
                                    "register_hookspecs hook)")
        if self._seen != self.host.changes:
            self._tables.clear()
            self._seen = self.host.changes
        if kind not in self._tables:
            table = KindTable(kind)
            self.host.call_each(f"register_{kind}",
                                lambda impl: impl.function(register=table.registrar(impl.plugin_name)),
                                undo=table.drop)
            if self._seen != self.host.changes:  # a plugin was set aside: what it gave other kinds goes too
                self._tables.clear()
                self._seen = self.host.changes
            self._tables[kind] = table
        return self._tables[kind]

    def entries(self, kind: str) -> dict[str, Entry]:
        """All components of ``kind`` by name. A plugin whose ``register_<kind>`` hook raises (not an
        fmkit error) is set aside in ``broken`` with its error; the other plugins' components stay."""
        return self._table(kind).entries

    def get(self, kind: str, name: str, *, where: str | None = None) -> Entry:
        """Look ``name`` up, or fail listing the available names, the closest match, and the plugins
        that are set aside (broken) or disabled, any of which may be the one that provides it."""
        return self._table(kind, where).get(name, where=where, unavailable=self.host.unavailable())

    def validate(self, kind: str, spec: Mapping[str, Any], *, where: str) -> tuple[Entry, BaseModel | None]:
        """Check ``{name: ..., **options}`` against the registered options model (options that name a
        component of another kind are resolved too)."""
        return self._table(kind, where).validate(spec, where=where, resolve=self._resolve_nested,
                                          unavailable=self.host.unavailable())

    def _resolve_nested(self, kind: str, spec: Any, where: str) -> dict[str, Any]:
        return self.resolve(kind, spec, where=where)

    def resolve(self, kind: str, spec: Mapping[str, Any] | str, *, where: str | None = None) -> dict[str, Any]:
        """``{name, **every option}``: ``spec`` validated, the options model's defaults filled in, as
        plain YAML/JSON-able data (what the resolved recipe and the checkpoint fingerprint hold)."""
        entry, opts = self.validate(kind, {"name": spec} if isinstance(spec, str) else spec, where=where or kind)
        return {"name": entry.name, **(dump_options(opts) if opts is not None else {})}

    def build(self, kind: str, spec: Mapping[str, Any] | str, *, where: str | None = None, **context: Any) -> Any:
        """Validate ``spec`` and call the factory with the options plus the context it asks for; every
        factory may ask for ``registry`` (this registry: to build components named by its options)."""
        where = where or kind
        entry, opts = self.validate(kind, {"name": spec} if isinstance(spec, str) else spec, where=where)
        return build(entry, opts, {"registry": self, **context}, where)

    def uses(self, kind: str, spec: Mapping[str, Any] | str) -> list[str]:
        """``"<kind>.<name>"`` of the component ``spec`` names and of every component its options name
        (``["writers.wav", "vocoders.griffin_lim"]``): what a run records the provenance of."""
        spec = self.resolve(kind, spec)
        out = [f"{kind}.{spec['name']}"]
        entry = self.get(kind, spec["name"])
        for key, sub in (component_fields(entry.options).values() if entry.options is not None else ()):
            if spec.get(key) is not None:
                out += self.uses(sub, spec[key])
        return out

    # -- plugin extras ------------------------------------------------------------------------
    def recipes(self) -> dict[str, tuple[Path, str]]:
        """Recipes shipped by plugins: name -> (path, plugin). A registered file that does not exist
        (a wheel built without its package-data) is left out, with a note naming the plugin."""
        self.host.ready()
        out: dict[str, tuple[Path, str]] = {}

        def call(impl: Any) -> None:
            plugin = impl.plugin_name

            def register(name: str, path: str | Path) -> None:
                check_name("recipes", name, plugin)
                if Path(path).is_file():
                    out[name] = (Path(path), plugin)
                elif (name, plugin) not in self._missing_recipes:
                    self._missing_recipes.add((name, plugin))
                    note(f"plugin {plugin!r} registers recipe {name!r} at {path}, which does not exist",
                         fix="a packaging bug in that plugin: its wheel must include the recipe files "
                             "([tool.setuptools.package-data] in its pyproject.toml)")

            impl.function(register=register)

        def undo(plugin: str) -> None:
            for name in [n for n, (_, p) in out.items() if p == plugin]:
                del out[name]

        self.host.call_each("register_recipes", call, undo=undo)
        return out

    def add_commands(self, app: Any) -> None:
        """Let every plugin add its sub-commands; one whose hook raises is set aside (and reported)."""
        self.host.ready()
        self.host.call_each("register_commands", lambda impl: impl.function(app=app), raise_in_process=False)

    def plugins(self) -> list[str]:
        return self.host.names()

    def plugin_infos(self) -> list[PluginInfo]:
        """Every loaded plugin with its distribution, version and hooks (a plugin registering
        nothing is listed too)."""
        return self.host.infos()

    def provenance(self, used: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``{"<kind>.<name>": {plugin, distribution, version}}`` for the components ``used``
        (``"models.unet"``, ...): what a run records of who made it."""
        out: dict[str, dict[str, Any]] = {}
        for key in used:
            kind, _, name = key.partition(".")
            e = self.entries(kind).get(name)
            if e is not None:
                dist, version = self.host.distribution(e.plugin)
                out[key] = {"plugin": e.plugin, "distribution": dist, "version": version}
        return out

    def plugin_packages(self) -> dict[str, str]:
        """Top-level package -> plugin name, for every plugin registered so far that is not part of
        fmkit itself (the built-in plugin is fmkit): where a frame of a traceback comes from."""
        out = self.host.packages()
        # the packages of the components looked up so far: a plugin object defined in a test module may
        # register a model or factory from its own package (``fmkit.testing.fresh_registry(MyPlugin())``)
        for table in list(self._tables.values()):
            for e in table.entries.values():
                root = str(getattr(e.factory, "__module__", None) or "").split(".")[0]
                if e.plugin != BUILTIN and root and root not in _NOT_PLUGINS:
                    out.setdefault(root, e.plugin)
        return out


#: packages a plugin's component may come from that are never the plugin's own code
_NOT_PLUGINS = frozenset({"fmkit", "__main__", "builtins", "torch", "torchvision", "torchaudio", "numpy", "scipy",
                          "functools"})

_DEFAULT: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry.fresh()
    return _DEFAULT


def set_registry(registry: Registry | None) -> Registry | None:
    """Make ``registry`` the process-wide one (None: a fresh one is built on next use); returns the one
    it replaces, for the caller to put back."""
    global _DEFAULT
    old, _DEFAULT = _DEFAULT, registry
    return old
