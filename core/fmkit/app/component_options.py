"""A component's pydantic options as a recipe sees them: the keys it may use, the options that name
components of their own (:class:`ComponentOf`), the options dumped as plain data, and the messages
about them (a validation error, an unknown key with its closest match, the one-line summary
`fmkit plugins --options` shows)."""

from __future__ import annotations

import difflib
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic import AliasChoices, BaseModel, ValidationError


#: what an option naming a component holds: its name, or ``{name: ..., **its options}``
ComponentSpec = str | dict[str, Any]


@dataclass(frozen=True)
class ComponentOf:
    """Marks an option whose value is a component of ``kind`` (a name or ``{name, ...options}``)::

        vocoder: Annotated[ComponentSpec, ComponentOf("vocoders")] = "griffin_lim"

    The registry checks it as it checks a recipe's own components (the name, with the closest one
    when unknown; its options), hands the factory the spec with every default filled in, and records
    the plugin that made it in the run's provenance. The factory builds it with the ``registry``
    that its signature may ask for: ``registry.build("vocoders", vocoder, ...)``."""

    kind: str


def component_fields(model: type[BaseModel]) -> dict[str, tuple[str, str]]:
    """``{field: (recipe key, kind)}`` for each option of ``model`` marked :class:`ComponentOf`."""
    keys = option_keys(model)
    out = {}
    for name, f in model.model_fields.items():
        kind = next((m.kind for m in f.metadata if isinstance(m, ComponentOf)), None)
        if kind is not None:
            key = name if name in keys else next((k for k in (f.validation_alias, f.alias)
                                                  if isinstance(k, str) and k in keys), name)
            out[name] = (key, kind)
    return out


def option_keys(model: type[BaseModel]) -> set[str]:
    """The keys a recipe may use for ``model``'s fields: each alias, and the field name where pydantic
    accepts it (no alias, or ``populate_by_name``/``validate_by_name``)."""
    cfg = model.model_config
    by_name = bool(cfg.get("populate_by_name") or cfg.get("validate_by_name"))
    keys: set[str] = set()
    for name, f in model.model_fields.items():
        va = f.validation_alias
        if isinstance(va, str):
            aliases = {va}
        elif isinstance(va, AliasChoices):
            aliases = {c for c in va.choices if isinstance(c, str)}
        else:
            aliases = {f.alias} if f.alias else set()
        keys |= aliases
        if not aliases or by_name:
            keys.add(name)
    return keys


def dump_options(opts: BaseModel) -> dict[str, Any]:
    """Every option of a validated options model, keyed so that validating the result gives the
    same options (an alias where the field name is not accepted), as plain YAML/JSON-able data."""
    model = type(opts)
    keys = option_keys(model)
    py, js = opts.model_dump(mode="python"), opts.model_dump(mode="json")
    out = {}
    for name, f in model.model_fields.items():
        if name not in py:  # Field(exclude=True)
            continue
        va = f.validation_alias
        key = name if name in keys else (va if isinstance(va, str) else f.alias or name)
        if isinstance(va, AliasChoices) and key not in keys:
            key = next(c for c in va.choices if isinstance(c, str))
        out[key] = _plain_data(py[name], js[name])
    return out


def _plain_data(py: Any, js: Any) -> Any:
    """``py`` where YAML and JSON both hold it as it is (keeps inf/nan, which pydantic's JSON mode turns
    into null), else pydantic's JSON form (paths, enums, dates as strings; tuples as lists)."""
    if py is None or isinstance(py, (bool, int, float, str)) and type(py) in (bool, int, float, str):
        return py
    if isinstance(py, (list, tuple)) and isinstance(js, list) and len(py) == len(js):
        return [_plain_data(a, b) for a, b in zip(py, js)]
    if isinstance(py, dict) and isinstance(js, dict) and all(isinstance(k, str) for k in py) and set(py) == set(js):
        return {k: _plain_data(v, js[k]) for k, v in py.items()}
    return js


def format_validation_error(exc: ValidationError, where: str, model: type[BaseModel] | None = None) -> str:
    """One line per problem, with its key path; with ``model``, unknown keys get the closest known one."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (where, *err["loc"]))
        got = err.get("input")
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            lines.append(unknown_option_line(loc, got, _closest_key(model, err["loc"]) if model is not None else None))
        else:
            lines.append(f"  - {loc}: {msg} (got {got!r})" if err["type"] != "missing" else f"  - {loc}: {msg}")
    return "\n".join(lines)


def unknown_option_line(loc: str, got: Any, close: str | None) -> str:
    """``  - model.hiden: unknown option (got 64); did you mean 'hidden'?``"""
    return f"  - {loc}: unknown option (got {got!r})" + (f"; did you mean {close!r}?" if close else "")


def closest_name(key: Any, known: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None


def _closest_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The known key of the (nested) model at ``loc[:-1]`` closest to the unknown key ``loc[-1]``."""
    for part in loc[:-1]:
        f = model.model_fields.get(part) if isinstance(part, str) else None
        ann = f.annotation if f is not None else None
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return closest_name(loc[-1], model.model_fields)


def describe_options(model: type[BaseModel]) -> str:
    parts = []
    keys = option_keys(model)
    for name, f in model.model_fields.items():
        if name not in keys:  # the key a recipe writes is the alias
            name = next((k for k in (f.validation_alias, f.alias) if isinstance(k, str) and k in keys), name)
        if typing.get_origin(f.annotation) is typing.Literal:  # the allowed values, not just "Literal"
            ann = " | ".join(repr(a) for a in typing.get_args(f.annotation))
        else:
            ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace("typing.", "")
        default = "required" if f.is_required() else f"default {f.default!r}"
        parts.append(f"{name} ({ann}, {default})")
    return ", ".join(parts) or "(none)"
