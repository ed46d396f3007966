"""The component table of one kind: name -> (factory, options model, plugin), and what a recipe does
with it: look a name up (or get the closest one), validate options, call the factory.

It knows nothing of pluggy or of how plugins load: the plugin host calls each plugin's
``register_<kind>`` hook with :meth:`KindTable.registrar`, and :class:`fmkit.app.registry.Registry`
puts the two together. A kind a plugin declares gets the same table as the core's kinds.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from fmkit.app.component_options import (
    closest_name,
    component_fields,
    describe_options,
    format_validation_error,
    option_keys,
    unknown_option_line,
)
from fmkit.errors import RecipeError, RegistryError

#: what a component name may be: it is typed in YAML and on command lines
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")

#: ``resolve(kind, spec, where) -> {name, **options}``: how a table resolves an option that names a
#: component of another kind (:class:`fmkit.app.component_options.ComponentOf`)
Resolver = Callable[[str, Any, str], dict[str, Any]]


def singular(kind: str) -> str:
    """``models`` -> ``model``: how messages name one component of ``kind``."""
    return kind[:-1] if kind.endswith("s") else kind


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: type[BaseModel] | None
    plugin: str
    description: str = ""


class KindTable:
    """The components of one kind by name, in registration order."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.entries: dict[str, Entry] = {}

    @property
    def one(self) -> str:
        return singular(self.kind)

    def registrar(self, plugin: str) -> Callable[..., None]:
        """The ``register(name, factory, options=None, description="")`` callable that ``plugin``'s
        ``register_<kind>`` hook is handed."""

        def register(name: str, factory: Callable[..., Any], options: type[BaseModel] | None = None,
                     description: str = "") -> None:
            check_name(self.kind, name, plugin)
            if name in self.entries and self.entries[name].plugin == plugin:
                raise RegistryError(f"plugin {plugin!r} registers {self.one} {name!r} twice",
                                    where=f"hook register_{self.kind} of plugin {plugin!r}",
                                    fix="a bug in that plugin: report it to its authors (each name may be registered "
                                        "once)")
            if name in self.entries:
                raise RegistryError(f"{self.one} {name!r} is registered twice: by plugin {self.entries[name].plugin!r} "
                                    f"and by plugin {plugin!r}",
                                    fix="rename one of them, or disable one plugin with FMKIT_DISABLE_PLUGINS")
            if options is not None and not (isinstance(options, type) and issubclass(options, BaseModel)):
                raise RegistryError(f"{self.one} {name!r} from plugin {plugin!r}: options must be a pydantic model "
                                    "class")
            self.entries[name] = Entry(self.kind, name, factory, options, plugin,
                                       description or own_description(factory))

        return register

    def drop(self, plugin: str) -> None:
        """Forget what ``plugin`` registered (it is set aside: nothing of it stays half-registered)."""
        for name in [n for n, e in self.entries.items() if e.plugin == plugin]:
            del self.entries[name]

    def get(self, name: str, *, where: str | None = None, unavailable: Iterable[str] = ()) -> Entry:
        """The entry ``name``, or an error listing the available names, the closest one, and
        ``unavailable`` (plugins set aside or disabled, any of which may be the one that provides it)."""
        if name in self.entries:
            return self.entries[name]
        available = sorted(self.entries)
        close = difflib.get_close_matches(name, available, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        missing = list(unavailable)
        raise RegistryError(f"unknown {self.one} {name!r}" + "".join(f"; {m}" for m in missing), where=where,
                            fix=f"{hint}available {self.kind}: {', '.join(available) or '(none)'}"
                                + ("; `fmkit plugins` shows why a plugin is not loaded" if missing else ""))

    def validate(self, spec: Mapping[str, Any], *, where: str, resolve: Resolver,
                 unavailable: Iterable[str] = ()) -> tuple[Entry, BaseModel | None]:
        """Check ``{name: ..., **options}`` against the registered options model; an option naming a
        component of another kind is resolved with ``resolve`` (its defaults filled in)."""
        if not isinstance(spec, Mapping) or "name" not in spec:
            raise RecipeError(f"a {self.one} must be a mapping with a 'name' key, got {spec!r}", where=where,
                              fix=f"write e.g. `{where.split('.')[-1]}: {{name: <one of "
                                  f"{', '.join(sorted(self.entries))}>}}`")
        name = spec["name"]
        if not isinstance(name, str):
            raise RecipeError(f"{self.one} name must be a string, got {name!r}", where=f"{where}.name")
        entry = self.get(name, where=f"{where}.name", unavailable=unavailable)
        raw = {k: v for k, v in spec.items() if k != "name"}
        if entry.options is None:
            if raw:
                raise RecipeError(f"{self.one} {name!r} takes no options, got {sorted(raw)}", where=where,
                                  fix="remove those keys")
            return entry, None
        keys = option_keys(entry.options)
        unknown = [k for k in raw if k not in keys]
        if unknown:  # also for options models without extra="forbid", which would drop them silently
            lines = [unknown_option_line(f"{where}.{k}", raw[k], closest_name(k, keys)) for k in unknown]
            raise RecipeError(f"invalid options for {self.one} {name!r}:\n" + "\n".join(lines), where=where,
                              fix=f"allowed options: {describe_options(entry.options)}")
        try:
            opts = entry.options.model_validate(raw)
        except ValidationError as exc:
            raise RecipeError(f"invalid options for {self.one} {name!r}:\n"
                              + format_validation_error(exc, where, entry.options), where=where,
                              fix=f"allowed options: {describe_options(entry.options)}") from None
        nested = {f: resolve(kind, getattr(opts, f), f"{where}.{key}")
                  for f, (key, kind) in component_fields(entry.options).items() if getattr(opts, f) is not None}
        return entry, opts.model_copy(update=nested) if nested else opts


def check_name(kind: str, name: object, plugin: str) -> None:
    """Refuse a name (of a component, or of a recipe) that a recipe could not spell (``"Lab Net!"``)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise RegistryError(f"plugin {plugin!r} registers {singular(kind)} {name!r}: not a valid component name",
                            where=f"hook register_{kind} of plugin {plugin!r}",
                            fix="use letters, digits, '_', '-' or '.', starting with a letter or '_' (at most 64), "
                                "e.g. 'lab_net'")


def build(entry: Entry, opts: BaseModel | None, context: Mapping[str, Any], where: str) -> Any:
    """Call ``entry``'s factory with the validated options as keywords plus the ``context`` names its
    signature asks for; a factory whose signature does not fit its options model is the plugin's bug."""
    kwargs = {k: getattr(opts, k) for k in type(opts).model_fields} if opts is not None else {}
    try:
        params = inspect.signature(entry.factory).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None:
        _check_signature(entry, params, kwargs, context, where)
    extra = {k: v for k, v in context.items() if params is not None and k in params and k not in kwargs}
    return entry.factory(**kwargs, **extra)


def _check_signature(entry: Entry, params: Mapping[str, inspect.Parameter], kwargs: Mapping[str, Any],
                     context: Mapping[str, Any], where: str) -> None:
    """Refuse a factory whose signature does not fit its options model: the plugin's fault, not the
    recipe's (called, it would fail with a bare ``TypeError``)."""
    what = f"{singular(entry.kind)} {entry.name!r} of plugin {entry.plugin!r}"
    fix = "a bug in that plugin: report it to its authors (fmkit is not the cause)"
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        extra = [k for k in kwargs if k not in params or params[k].kind in (params[k].POSITIONAL_ONLY,
                                                                             params[k].VAR_POSITIONAL)]
        if extra:
            opts = entry.options.__name__ if entry.options is not None else "options"
            raise RegistryError(f"{what}: its options model {opts} declares option(s) {extra} that its factory "
                                f"{qualname(entry.factory)} does not accept", where=where, fix=fix)
    missing = [n for n, p in params.items() if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD,
               p.KEYWORD_ONLY) and n not in kwargs and n not in context]
    if missing:
        raise RegistryError(f"{what}: its factory {qualname(entry.factory)} requires {missing}, which neither its "
                            f"options model nor the build context ({', '.join(sorted(context)) or 'none'}) provides",
                            where=where, fix=fix)


def qualname(obj: Any) -> str:
    """A function's, class's or module's name; an instance's class name."""
    return getattr(obj, "__name__", None) or type(obj).__name__


def own_description(factory: Any) -> str:
    """The first line of ``factory``'s own docstring: not one it inherits from a base class."""
    doc = factory.__dict__.get("__doc__") if inspect.isclass(factory) else getattr(factory, "__doc__", None)
    doc = inspect.cleandoc(doc) if isinstance(doc, str) else ""
    return doc.splitlines()[0] if doc else ""
