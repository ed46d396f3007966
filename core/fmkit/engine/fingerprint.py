"""What a checkpoint must match: the fingerprint of the options that give its weights their meaning
(a recipe's model, data, path and source), compared key by key so that every difference is named."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fmkit.errors import CheckpointError

RECIPE_SECTIONS = ("model", "data", "path", "source")


def fingerprint_diff(theirs: Mapping[str, Any], ours: Mapping[str, Any], sections: tuple[str, ...] = RECIPE_SECTIONS,
                     ours_label: str = "this recipe") -> list[str]:
    """The differing key paths of a checkpoint's fingerprint and ours, each as ``model.hidden: 8 in
    the checkpoint, 16 in this recipe`` (a key one side lacks shows as ``absent``). A recipe
    checkpoint from before path and source were recorded (model and data only) is held to the options
    it recorded."""
    legacy = "path" in ours and "path" not in theirs and "model" in theirs
    out: list[str] = []

    def walk(a: Any, b: Any, key: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) if legacy else set(a) | set(b), key=str):
                walk(a.get(k, _ABSENT), b.get(k, _ABSENT), f"{key}.{k}")
        elif _jsonish(a) != _jsonish(b):
            out.append(f"{key}: {_show(a)} in the checkpoint, {_show(b)} in {ours_label}")

    for s in sections:
        a, b = theirs.get(s, _ABSENT), ours.get(s, _ABSENT)
        if legacy and a is _ABSENT:
            continue
        walk(a, b, s)
    return out


_ABSENT = object()


def _jsonish(v: Any) -> Any:
    """``v`` as it reads back from a checkpoint's meta.json (tuples are lists there)."""
    return [_jsonish(x) for x in v] if isinstance(v, (list, tuple)) else v


def _show(v: Any) -> str:
    return "absent" if v is _ABSENT else repr(v)


def check_fingerprint(theirs: Mapping[str, Any], ours: Mapping[str, Any], where: str, *,
                      sections: tuple[str, ...] = RECIPE_SECTIONS, fix: str | None = None,
                      ours_label: str = "this recipe") -> None:
    """Refuse a checkpoint whose fingerprint differs from ``ours`` in ``sections``, naming every difference.

    Args:
        theirs: the checkpoint's fingerprint (its meta.json's recipe sections).
        ours: the fingerprint of the recipe or model about to load it.
        where: the checkpoint's path, for the error.
        sections: the top-level keys compared (the options that give the weights their meaning).
        fix: the error's fix; None: resume with the run's own recipe or start a new run.
        ours_label: how the error names ``ours`` ("this recipe").

    Raises:
        CheckpointError: naming every differing key path, when there is one.
    """
    diff = fingerprint_diff(theirs, ours, sections, ours_label)
    if diff:
        parts = list(dict.fromkeys(d.split(":", 1)[0].split(".", 1)[0] for d in diff))
        raise CheckpointError(
            f"the checkpoint was written for a different {' and '.join(parts)}: " + "; ".join(diff), where=where,
            fix=fix or "resume with the run's own recipe (recipe.yaml in the run directory), or start a new run")
