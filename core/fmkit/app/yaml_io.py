"""Reading recipe YAML safely: unique keys, a bound on alias expansion (an alias bomb is refused,
not expanded), file errors as fmkit errors naming the file."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import yaml

from fmkit.errors import RecipeError


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a recipe file into a mapping, with line/column on syntax errors."""
    p = Path(path)
    try:
        p.stat()
    except OSError as exc:
        if exc.errno != errno.ENOENT:  # name too long, not a directory, permission, ...
            raise RecipeError(f"cannot read recipe {str(p)!r}: {exc.strerror or exc}", fix="check the path") from None
    if not p.exists():
        raise RecipeError(f"recipe file {str(p)!r} does not exist", where=str(p.resolve().parent),
                          fix="check the path; shipped recipes live in recipes/ (see `fmkit recipe list`)")
    if not p.is_file():
        raise RecipeError(f"recipe path {str(p)!r} is not a file", fix="pass a .yaml file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe {str(p)!r}: {exc}", fix="pass a readable UTF-8 YAML file") from None
    return parse_yaml(text, str(p))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping: plain YAML keeps the last one
    silently, so a second ``trainer:`` section would drop the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):  # e.g. `!!set 0`: the base constructor explains it
            return super().construct_mapping(node, deep=deep)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the base constructor names it
                break
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, mark: yaml.Mark) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.problem_mark = key, first, mark
        self.problem = f"the key {key!r} appears twice in one mapping (first on line {first})"


#: the most values (scalars, lists, mappings) a recipe may hold once its YAML aliases are expanded: a
#: real recipe has a few hundred; nested aliases (a "billion laughs" bomb) would otherwise take minutes
#: to validate and print an error message of hundreds of MB
MAX_RECIPE_VALUES = 100_000


class AliasBomb(Exception):
    def __init__(self, cyclic: bool) -> None:
        self.cyclic = cyclic


def _expanded_values(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """How many values the YAML node graph ``node`` stands for once every alias is expanded (an alias
    is the same node object again); raises :class:`AliasBomb` past MAX_RECIPE_VALUES or on a cycle."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise AliasBomb(cyclic=True)
    active.add(key)
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_values(v, memo, active) for v in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_values(k, memo, active) + _expanded_values(v, memo, active) for k, v in node.value)
    active.discard(key)
    if total > MAX_RECIPE_VALUES:
        raise AliasBomb(cyclic=False)
    memo[key] = total
    return total


def load_bounded(text: str) -> Any:
    """``yaml.safe_load`` with unique keys, refusing (:class:`AliasBomb`) before anything is built
    when aliases expand past MAX_RECIPE_VALUES values or refer to themselves."""
    loader = _UniqueKeyLoader(text)  # a SafeLoader: no tags that build objects
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_values(node, {}, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def alias_error(exc: AliasBomb, where: str) -> RecipeError:
    what = ("recipe has a YAML alias that contains itself" if exc.cyclic else
            f"recipe expands to more than {MAX_RECIPE_VALUES:,} values through YAML aliases (*name)")
    return RecipeError(what, where=where, fix="write the values out instead of nesting aliases; a recipe needs "
                       "only a few hundred values")


def parse_yaml(text: str, where: str = "<recipe>") -> dict[str, Any]:
    try:
        data = load_bounded(text)
    except AliasBomb as exc:
        raise alias_error(exc, where) from None
    except _DuplicateKey as exc:
        loc = f"{where}, line {exc.problem_mark.line + 1}, column {exc.problem_mark.column + 1}"
        raise RecipeError(f"recipe is not valid: {exc.problem}", where=loc,
                          fix=f"keep one {exc.key!r} (YAML would silently keep only the last)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = f"{where}, line {mark.line + 1}, column {mark.column + 1}" if mark is not None else where
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(f"recipe is not valid YAML: {problem}", where=loc,
                          fix="fix the YAML syntax at that position (indentation, colons, quotes)") from None
    except RecursionError:
        raise RecipeError("recipe nests lists/mappings too deeply to read", where=where,
                          fix="a recipe needs only a few levels of nesting; check for unbalanced brackets") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a YAML mapping of sections, got {type(data).__name__}", where=where,
                          fix="start the file with keys such as `data:`, `model:`, `trainer:`")
    return data
