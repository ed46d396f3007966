"""The component registry, filled by pluggy hooks (built-in plugin + entry points of group ``fmkit``).

``get_registry()`` returns the process-wide registry; ``Registry.fresh()`` builds an independent
one (tests, library users). Entry points load lazily, on the first lookup. Environment variables:

- ``FMKIT_PLUGINS``: comma-separated allow list of entry-point names (``none`` loads none);
- ``FMKIT_DISABLE_PLUGINS``: comma-separated block list.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from fmkit.app import hookspecs
from fmkit.app.component_options import (
    closest_name,
    describe_options,
    dump_options,
    format_validation_error,
    option_keys,
    unknown_option_line,
)
from fmkit.errors import RecipeError, RegistryError

ENTRY_POINT_GROUP = "fmkit"
BUILTIN = "fmkit.app.builtin.plugin"


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: type[BaseModel] | None
    plugin: str
    description: str = ""


class Registry:
    """Name -> component lookups for every kind, with the plugin that registered each."""

    def __init__(self, pm: pluggy.PluginManager, *, load_entry_points: bool = True) -> None:
        self.pm = pm
        self._load_entry_points = load_entry_points
        self._entry_points_loaded = False
        self._cache: dict[str, dict[str, Entry]] = {}
        self._named: set[int] = set()  # plugins given a name in add_plugin: kept when also installed

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
        already registered (say, also loaded from its entry point) is left as it is."""
        if self.pm.is_registered(plugin):
            return
        try:
            self.pm.register(plugin, name=name)
            if name is not None:
                self._named.add(id(plugin))
        except ValueError as exc:  # pluggy: the name is taken by another plugin object
            raise RegistryError(f"cannot add plugin {name or _qualname(plugin)!r}: {exc}",
                                fix="give it another name, e.g. add_plugin(obj, name='my_plugin')") from None
        self._cache.clear()

    def _ensure_entry_points(self) -> None:
        """Import every allowed entry point, then register them all, or none: a failure leaves the
        registry as it was (and the next lookup tries again and reports it again)."""
        if self._entry_points_loaded or not self._load_entry_points:
            return
        allow = _env_list("FMKIT_PLUGINS")
        block = set(_env_list("FMKIT_DISABLE_PLUGINS") or [])
        loaded: list[tuple[str, object]] = []
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if allow is not None and ep.name not in allow:
                continue
            if ep.name in block or self.pm.has_plugin(ep.name):
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the whole tool down silently
                raise RegistryError(
                    f"plugin {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}",
                    where=f"entry point group {ENTRY_POINT_GROUP!r}",
                    fix=f"reinstall it, or skip it with FMKIT_DISABLE_PLUGINS={ep.name}",
                ) from exc
            # a plugin added in-process (Registry.fresh(plugins=[module])) that is installed too: it
            # keeps its registration, under its entry point's name (as the CLI names it in errors)
            if self.pm.is_registered(module):
                if id(module) not in self._named and self.pm.get_name(module) != ep.name:
                    self.pm.unregister(module)
                    self.pm.register(module, name=ep.name)
            elif all(m is not module for _, m in loaded):
                loaded.append((ep.name, module))
        done: list[object] = []
        try:
            for name, module in loaded:
                self.pm.register(module, name=name)
                done.append(module)
        except Exception as exc:  # pluggy refused it (a name clash, a malformed hook implementation)
            for module in done:
                self.pm.unregister(module)
            raise RegistryError(f"plugin {name!r} cannot be registered: {type(exc).__name__}: {exc}",
                                where=f"entry point group {ENTRY_POINT_GROUP!r}",
                                fix=f"report it to the plugin's authors, or skip it with FMKIT_DISABLE_PLUGINS={name}",
                                ) from exc
        self._entry_points_loaded = True
        self._cache.clear()

    # -- collection ---------------------------------------------------------------------------
    def entries(self, kind: str) -> dict[str, Entry]:
        """All components of ``kind`` by name."""
        if kind not in hookspecs.KINDS:
            raise RegistryError(f"unknown component kind {kind!r}", fix=f"use one of: {', '.join(hookspecs.KINDS)}")
        self._ensure_entry_points()
        if kind not in self._cache:
            found: dict[str, Entry] = {}
            hook = getattr(self.pm.hook, f"register_{kind}")
            for impl in reversed(hook.get_hookimpls()):  # registration order
                plugin_name = impl.plugin_name

                def register(name: str, factory: Callable[..., Any], options: type[BaseModel] | None = None,
                             description: str = "", _plugin: str = plugin_name) -> None:
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
                    found[name] = Entry(kind, name, factory, options, _plugin, description or _doc(factory))

                impl.function(register=register)
            self._cache[kind] = found
        return self._cache[kind]

    def get(self, kind: str, name: str, *, where: str | None = None) -> Entry:
        """Look ``name`` up, or fail listing the available names and the closest match."""
        table = self.entries(kind)
        if name in table:
            return table[name]
        available = sorted(table)
        close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise RegistryError(
            f"unknown {kind[:-1]} {name!r}",
            where=where,
            fix=f"{hint}available {kind}: {', '.join(available) or '(none)'}",
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
        """Recipes shipped by plugins: name -> (path, plugin)."""
        self._ensure_entry_points()
        out: dict[str, tuple[Path, str]] = {}
        for impl in self.pm.hook.register_recipes.get_hookimpls():
            impl.function(register=lambda name, path, _p=impl.plugin_name: out.__setitem__(name, (Path(path), _p)))
        return out

    def add_commands(self, app: Any) -> None:
        self._ensure_entry_points()
        self.pm.hook.register_commands(app=app)

    def plugins(self) -> list[str]:
        self._ensure_entry_points()
        return [name for name, _ in self.pm.list_name_plugin()]

    def plugin_packages(self) -> dict[str, str]:
        """Top-level package -> plugin name, for every plugin registered so far that is not part of
        fmkit itself (the built-in plugin is fmkit): where a frame of a traceback comes from."""
        out: dict[str, str] = {}
        for name, obj in self.pm.list_name_plugin():
            module = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None) or type(obj).__module__
            root = str(module).split(".")[0]
            if root not in ("fmkit", "__main__", "builtins"):
                out.setdefault(root, name)
        return out


def check_factory(entry: Entry, kwargs: Mapping[str, Any], context: Mapping[str, Any], where: str) -> None:
    """Refuse a factory whose signature does not fit its options model: the plugin's fault, not the
    recipe's (called, it would fail with a bare ``TypeError``)."""
    try:
        params = inspect.signature(entry.factory).parameters
    except (TypeError, ValueError):
        return
    what = f"{entry.kind[:-1]} {entry.name!r} of plugin {entry.plugin!r}"
    fix = "a bug in that plugin: report it to its authors (fmkit is not the cause)"
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        extra = [k for k in kwargs if k not in params or params[k].kind in (params[k].POSITIONAL_ONLY,
                                                                             params[k].VAR_POSITIONAL)]
        if extra:
            opts = entry.options.__name__ if entry.options is not None else "options"
            raise RegistryError(f"{what}: its options model {opts} declares option(s) {extra} that its factory "
                                f"{_qualname(entry.factory)} does not accept", where=where, fix=fix)
    missing = [n for n, p in params.items() if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD,
               p.KEYWORD_ONLY) and n not in kwargs and n not in context]
    if missing:
        raise RegistryError(f"{what}: its factory {_qualname(entry.factory)} requires {missing}, which neither its "
                            f"options model nor the build context ({', '.join(sorted(context)) or 'none'}) provides",
                            where=where, fix=fix)


def _qualname(obj: Any) -> str:
    """A function's, class's or module's name; an instance's class name."""
    return getattr(obj, "__name__", None) or type(obj).__name__


def call_with_context(factory: Callable[..., Any], kwargs: dict[str, Any], context: Mapping[str, Any]) -> Any:
    """Call ``factory(**kwargs)`` adding each context value whose name the factory's signature has."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    extra = {k: v for k, v in context.items() if k in params and k not in kwargs}
    return factory(**kwargs, **extra)


def _doc(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc else ""


def _env_list(var: str) -> list[str] | None:
    val = os.environ.get(var)
    if val is None:
        return None
    val = val.strip()
    if val.lower() in ("", "none"):
        return []
    return [v.strip() for v in val.split(",") if v.strip()]


_DEFAULT: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry.fresh()
    return _DEFAULT
