"""A registered component (:class:`Entry`) and calling its factory: its options as keywords plus the
build context its signature asks for, and refusing (as the plugin's bug, not the recipe's) a factory
whose signature does not fit its options model."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from fmkit.errors import RegistryError


@dataclass(frozen=True)
class Entry:
    """One registered component: its kind and name, the factory that builds it, its options model and
    the plugin that registered it (the registry's table holds these)."""

    kind: str
    name: str
    factory: Callable[..., Any]
    options: type[BaseModel] | None
    plugin: str
    description: str = ""


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
