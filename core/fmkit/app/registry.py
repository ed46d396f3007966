"""The component registry, filled by pluggy hooks (built-in plugin + entry points of group ``fmkit``).

``get_registry()`` returns the process-wide registry; ``Registry.fresh()`` builds an independent
one (tests, library users). Entry points load lazily, on the first lookup; a plugin that fails to
load is set aside in ``Registry.broken`` and the others work (:mod:`fmkit.app.plugin_loading`).
Environment variables:

- ``FMKIT_PLUGINS``: comma-separated allow list of entry-point names (``none`` loads none);
- ``FMKIT_DISABLE_PLUGINS``: comma-separated block list.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from fmkit._version import __version__
from fmkit.app import hookspecs
from fmkit.app.component_options import (
    closest_name,
    describe_options,
    dump_options,
    format_validation_error,
    option_keys,
    unknown_option_line,
)
from fmkit.app.factories import Entry, _qualname, call_with_context, check_factory
from fmkit.app.plugin_loading import (
    BrokenPlugin,
    PluginInfo,
    broken_from_exception,
    check_name,
    distribution_of,
    hook_problems,
    load_entry_points,
    own_description,
)
from fmkit.errors import FmkitError, RecipeError, RegistryError, note

ENTRY_POINT_GROUP = "fmkit"
BUILTIN = "fmkit.app.builtin.plugin"


class Registry:
    """Name -> component lookups for every kind, with the plugin that registered each."""

    def __init__(self, pm: pluggy.PluginManager, *, load_entry_points: bool = True) -> None:
        self.pm = pm
        self._load_entry_points = load_entry_points
        self._entry_points_loaded = False
        self._cache: dict[str, dict[str, Entry]] = {}
        self._named: set[int] = set()  # plugins given a name in add_plugin: kept when also installed
        self._unchecked: list[object] = []  # plugins added in-process whose hooks are not checked yet
        self._specs_declared: set[str] = set()
        self._missing_recipes: set[tuple[str, str]] = set()
        self._dists: dict[str, tuple[str | None, str | None]] = {}
        #: plugins set aside (failed import, bad hooks, a register hook that raised), by name
        self.broken: dict[str, BrokenPlugin] = {}
        #: installed plugins not loaded because of FMKIT_PLUGINS / FMKIT_DISABLE_PLUGINS: name -> why
        self.disabled: dict[str, str] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def fresh(cls, *, builtins: bool = True, entry_points: bool = True, plugins: Iterable[object] = ()) -> Registry:
        """A new registry: built-in plugin, entry points (lazily) and any extra plugin objects."""
        pm = pluggy.PluginManager("fmkit")
        pm.add_hookspecs(hookspecs)
        if builtins:
            pm.register(importlib.import_module("fmkit.app.builtin.plugin"), name=BUILTIN)
        reg = cls(pm, load_entry_points=entry_points)
        for p in plugins:
            reg.add_plugin(p)
        return reg

    def add_plugin(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object or module (anything with ``@hookimpl`` functions); one that is
        already registered (say, also loaded from its entry point) is left as it is. Its hooks are
        checked at the first lookup (misspelled or unmarked hooks are a RegistryError then)."""
        if self.pm.is_registered(plugin):
            return
        try:
            self.pm.register(plugin, name=name)
            if name is not None:
                self._named.add(id(plugin))
        except ValueError as exc:  # pluggy: the name is taken by another plugin object
            raise RegistryError(f"cannot add plugin {name or _qualname(plugin)!r}: {exc}",
                                fix="give it another name, e.g. add_plugin(obj, name='my_plugin')") from None
        self._unchecked.append(plugin)
        self._cache.clear()

    def _ready(self) -> None:
        """Entry points loaded and every plugin's hooks checked: what each lookup needs first."""
        self._ensure_entry_points()
        if self._unchecked:
            self.declare_hookspecs()
            for plugin in list(self._unchecked):
                if not self.pm.is_registered(plugin):
                    self._unchecked.remove(plugin)
                    continue
                problems = hook_problems(self.pm, plugin)
                if problems:
                    name = self.pm.get_name(plugin)
                    raise RegistryError(f"plugin {name!r}: " + "; ".join(problems), where=f"plugin {name!r}",
                                        fix="mark each hook with @fmkit.hookimpl and name it as in "
                                            "fmkit.app.hookspecs (register_models, register_datasets, ...)")
                self._unchecked.remove(plugin)

    def record_distribution(self, name: str, dist: tuple[str | None, str | None]) -> None:
        """Remember the distribution and version that plugin ``name`` was installed from (its entry point's)."""
        self._dists[name] = dist

    def named_in_process(self, plugin: object) -> bool:
        """Whether :meth:`add_plugin` gave ``plugin`` its name (it keeps that name when also installed)."""
        return id(plugin) in self._named

    def declare_hookspecs(self) -> None:
        """Let plugins declare their own hook kinds (``register_hookspecs``) before hooks are checked;
        a plugin whose declaration raises is set aside."""
        for impl in self.pm.hook.register_hookspecs.get_hookimpls():
            if impl.plugin_name in self._specs_declared:
                continue
            self._specs_declared.add(impl.plugin_name)
            try:
                impl.function(register=self._add_hookspecs)
            except Exception as exc:
                self._set_aside(impl, "register_hookspecs", exc)
                self.pm.unregister(impl.plugin)

    def _set_aside(self, impl: Any, stage: str, exc: BaseException) -> None:
        """Record that ``impl``'s plugin failed at ``stage`` (a hook of its that raised) and say so once."""
        target = getattr(impl.plugin, "__name__", type(impl.plugin).__module__)
        b = broken_from_exception(impl.plugin_name, target, stage, exc, dist=self._dist(impl.plugin_name, impl.plugin))
        self.broken[impl.plugin_name] = b
        note(b.summary(), fix=b.fix())
        self._cache.clear()

    def _add_hookspecs(self, specs: object) -> None:
        names = [n for n in dir(specs) if self.pm.parse_hookspec_opts(specs, n) is not None]
        if any(getattr(getattr(self.pm.hook, n, None), "spec", None) is None for n in names):
            self.pm.add_hookspecs(specs)

    def _ensure_entry_points(self) -> None:
        """Import and register every allowed entry point (once): see :func:`load_entry_points`."""
        if self._entry_points_loaded or not self._load_entry_points:
            return
        self._entry_points_loaded = True
        load_entry_points(self, entry_points(group=ENTRY_POINT_GROUP))
        self._cache.clear()

    # -- collection ---------------------------------------------------------------------------
    def entries(self, kind: str) -> dict[str, Entry]:
        """All components of ``kind`` by name. A plugin whose ``register_<kind>`` hook raises (not an
        fmkit error) is set aside in ``broken`` with its error; the other plugins' components stay."""
        if kind not in hookspecs.KINDS:
            raise RegistryError(f"unknown component kind {kind!r}", fix=f"use one of: {', '.join(hookspecs.KINDS)}")
        self._ready()
        if kind not in self._cache:
            found: dict[str, Entry] = {}
            hook = getattr(self.pm.hook, f"register_{kind}")
            for impl in reversed(hook.get_hookimpls()):  # registration order
                plugin_name = impl.plugin_name
                if plugin_name in self.broken:
                    continue

                def register(name: str, factory: Callable[..., Any], options: type[BaseModel] | None = None,
                             description: str = "", _plugin: str = plugin_name) -> None:
                    check_name(kind, name, _plugin)
                    if name in found and found[name].plugin == _plugin:
                        raise RegistryError(
                            f"plugin {_plugin!r} registers {kind[:-1]} {name!r} twice",
                            where=f"hook register_{kind} of plugin {_plugin!r}",
                            fix="a bug in that plugin: report it to its authors (each name may be registered once)",
                        )
                    if name in found:
                        raise RegistryError(
                            f"{kind[:-1]} {name!r} is registered twice: by plugin {found[name].plugin!r} "
                            f"and by plugin {_plugin!r}",
                            fix="rename one of them, or disable one plugin with FMKIT_DISABLE_PLUGINS",
                        )
                    if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
                        raise RegistryError(
                            f"{kind[:-1]} {name!r} from plugin {_plugin!r}: options must be a pydantic model class",
                        )
                    found[name] = Entry(kind, name, factory, options, _plugin, description or own_description(factory))

                try:
                    impl.function(register=register)
                except FmkitError as exc:
                    if plugin_name not in self._dists:  # added in-process (a plugin's own test): say it there
                        raise
                    for n in [n for n, e in found.items() if e.plugin == plugin_name]:  # installed: set aside
                        del found[n]
                    self._set_aside(impl, f"register_{kind}", exc)
                except Exception as exc:  # the plugin's own bug: set it aside, keep the others
                    for n in [n for n, e in found.items() if e.plugin == plugin_name]:
                        del found[n]
                    self._set_aside(impl, f"register_{kind}", exc)
            self._cache[kind] = found
        return self._cache[kind]

    def get(self, kind: str, name: str, *, where: str | None = None) -> Entry:
        """Look ``name`` up, or fail listing the available names, the closest match, and the plugins
        that are set aside (broken) or disabled, any of which may be the one that provides it."""
        table = self.entries(kind)
        if name in table:
            return table[name]
        available = sorted(table)
        close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        missing = [f"plugin {b.name!r} could not be loaded ({b.stage}: {b.error}"
                   + (f", at {b.location}" if b.location else "") + ") and may provide it"
                   for b in self.broken.values()]
        missing += [f"plugin {n!r} is installed but disabled ({why}) and may provide it"
                    for n, why in sorted(self.disabled.items())]
        raise RegistryError(
            f"unknown {kind[:-1]} {name!r}" + ("".join(f"; {m}" for m in missing)),
            where=where,
            fix=f"{hint}available {kind}: {', '.join(available) or '(none)'}"
                + ("; `fmkit plugins` shows why a plugin is not loaded" if missing else ""),
        )

    def validate(self, kind: str, spec: Mapping[str, Any], *, where: str) -> tuple[Entry, BaseModel | None]:
        """Check ``{name: ..., **options}`` against the registered options model."""
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise RecipeError(
                f"a {kind[:-1]} must be a mapping with a 'name' key, got {spec!r}",
                where=where,
                fix=f"write e.g. `{where.split('.')[-1]}: {{name: <one of {', '.join(sorted(self.entries(kind)))}>}}`",
            )
        name = spec["name"]
        if not isinstance(name, str):
            raise RecipeError(f"{kind[:-1]} name must be a string, got {name!r}", where=f"{where}.name")
        entry = self.get(kind, name, where=f"{where}.name")
        raw = {k: v for k, v in spec.items() if k != "name"}
        if entry.options is None:
            if raw:
                raise RecipeError(
                    f"{kind[:-1]} {name!r} takes no options, got {sorted(raw)}", where=where,
                    fix="remove those keys",
                )
            return entry, None
        keys = option_keys(entry.options)
        unknown = [k for k in raw if k not in keys]
        if unknown:  # also for options models without extra="forbid", which would drop them silently
            lines = [unknown_option_line(f"{where}.{k}", raw[k], closest_name(k, keys)) for k in unknown]
            raise RecipeError(f"invalid options for {kind[:-1]} {name!r}:\n" + "\n".join(lines), where=where,
                              fix=f"allowed options: {describe_options(entry.options)}")
        try:
            return entry, entry.options.model_validate(raw)
        except ValidationError as exc:
            raise RecipeError(
                f"invalid options for {kind[:-1]} {name!r}:\n" + format_validation_error(exc, where, entry.options),
                where=where,
                fix=f"allowed options: {describe_options(entry.options)}",
            ) from None

    def resolve(self, kind: str, spec: Mapping[str, Any] | str, *, where: str | None = None) -> dict[str, Any]:
        """``{name, **every option}``: ``spec`` validated, the options model's defaults filled in, as
        plain YAML/JSON-able data (what the resolved recipe and the checkpoint fingerprint hold)."""
        if isinstance(spec, str):
            spec = {"name": spec}
        entry, opts = self.validate(kind, spec, where=where or kind)
        return {"name": entry.name, **(dump_options(opts) if opts is not None else {})}

    def build(self, kind: str, spec: Mapping[str, Any] | str, *, where: str | None = None, **context: Any) -> Any:
        """Validate ``spec`` and call the factory with the options plus the context it asks for."""
        if isinstance(spec, str):
            spec = {"name": spec}
        where = where or kind
        entry, opts = self.validate(kind, spec, where=where)
        kwargs = {k: getattr(opts, k) for k in type(opts).model_fields} if opts is not None else {}
        check_factory(entry, kwargs, context, where)
        return call_with_context(entry.factory, kwargs, context)

    # -- plugin extras ------------------------------------------------------------------------
    def recipes(self) -> dict[str, tuple[Path, str]]:
        """Recipes shipped by plugins: name -> (path, plugin). A registered file that does not exist
        (a wheel built without its package-data) is left out, with a note naming the plugin."""
        self._ready()
        out: dict[str, tuple[Path, str]] = {}
        for impl in self.pm.hook.register_recipes.get_hookimpls():
            def register(name: str, path: str | Path, _p: str = impl.plugin_name) -> None:
                check_name("recipes", name, _p)
                if Path(path).is_file():
                    out[name] = (Path(path), _p)
                elif (name, _p) not in self._missing_recipes:
                    self._missing_recipes.add((name, _p))
                    note(f"plugin {_p!r} registers recipe {name!r} at {path}, which does not exist",
                         fix="a packaging bug in that plugin: its wheel must include the recipe files "
                             "([tool.setuptools.package-data] in its pyproject.toml)")
            impl.function(register=register)
        return out

    def add_commands(self, app: Any) -> None:
        """Let every plugin add its sub-commands; one whose hook raises is set aside (and reported)."""
        self._ready()
        for impl in reversed(self.pm.hook.register_commands.get_hookimpls()):
            if impl.plugin_name in self.broken:
                continue
            try:
                impl.function(app=app)
            except Exception as exc:
                self._set_aside(impl, "register_commands", exc)

    def plugins(self) -> list[str]:
        self._ready()
        return [name for name, _ in self.pm.list_name_plugin()]

    def plugin_infos(self) -> list[PluginInfo]:
        """Every loaded plugin with its distribution, version and hooks (a plugin registering
        nothing is listed too)."""
        self._ready()
        out = []
        for name, obj in self.pm.list_name_plugin():
            hooks = tuple(sorted(c.name for c in self.pm.get_hookcallers(obj) or []))
            module = obj.__name__ if inspect.ismodule(obj) else type(obj).__module__ + "." + type(obj).__qualname__
            out.append(PluginInfo(name, module, *self._dist(name, obj), hooks))
        return out

    def _dist(self, name: str, obj: object) -> tuple[str | None, str | None]:
        if name in self._dists:
            return self._dists[name]
        if name == BUILTIN:
            return "fmkit", __version__
        return distribution_of(obj)

    def provenance(self, used: Iterable[str]) -> dict[str, dict[str, Any]]:
        """``{"<kind>.<name>": {plugin, distribution, version}}`` for the components ``used``
        (``"models.unet"``, ...): what a run records of who made it."""
        out: dict[str, dict[str, Any]] = {}
        objs = dict(self.pm.list_name_plugin())
        for key in used:
            kind, _, name = key.partition(".")
            e = self.entries(kind).get(name)
            if e is None:
                continue
            dist, version = self._dist(e.plugin, objs.get(e.plugin))
            out[key] = {"plugin": e.plugin, "distribution": dist, "version": version}
        return out

    def plugin_packages(self) -> dict[str, str]:
        """Top-level package -> plugin name, for every plugin registered so far that is not part of
        fmkit itself (the built-in plugin is fmkit): where a frame of a traceback comes from."""
        out: dict[str, str] = {}
        for name, obj in self.pm.list_name_plugin():
            module = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None) or type(obj).__module__
            root = str(module).split(".")[0]
            if root not in ("fmkit", "__main__", "builtins"):
                out.setdefault(root, name)
        # the packages of the components looked up so far: a plugin object defined in a test module may
        # register a model or factory from its own package (``fmkit.testing.fresh_registry(MyPlugin())``)
        for entries in list(self._cache.values()):
            for e in entries.values() if isinstance(entries, dict) else ():
                if not isinstance(e, Entry) or e.plugin == BUILTIN:
                    continue
                root = str(getattr(e.factory, "__module__", None) or "").split(".")[0]
                if root and root not in _NOT_PLUGINS:
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
