"""Property tests of recipe reading: whatever text, mapping or override a user gives, the result is a
valid :class:`Recipe` or a :class:`RecipeError` (what / where / fix), never another exception.

The strategies mix arbitrary text with recipe-shaped material (section and option names, YAML
punctuation, anchors, tags, deep nesting), so the examples reach past the YAML parser into
validation and the per-component checks. Found so far and fixed: a superscript digit as list
index in ``--set`` (``str.isdigit`` accepted it, ``int`` did not), deep nesting (RecursionError in
the YAML composer), NaN/inf accepted as trainer numbers.
"""

from __future__ import annotations

import copy

import pytest
from fmkit.app.recipe import Recipe, apply_overrides, parse_yaml, validate
from fmkit.app.registry import Registry
from fmkit.errors import RecipeError
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

REG = Registry.fresh(entry_points=False)  # the core's components only: fast and the same everywhere
FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SECTIONS = ["name", "seed", "data", "model", "path", "source", "coupling", "solver", "trainer", "eval", "callbacks"]
OPTIONS = ["name", "n", "noise", "hidden", "depth", "time_dim", "field", "fields", "steps", "batch_size", "lr",
           "grad_accum", "ema_decay", "sigma_min", "metrics", "writers", "every", "num_samples", "device",
           "loss_weights", "betas", "schedule", "x", "0", "1", "-1", ""]
NAMES = ["moons", "mlp", "condot", "discrete", "euler", "rk4", "dopri5", "gaussian", "eight_gaussians", "exact_ot",
         "sinkhorn", "w2", "scatter", "os.system", "", "Moons", "mlp ", "cpu", "cuda", "auto", "cosine"]
BASE = {"data": {"name": "moons", "n": 256}, "model": {"name": "mlp", "hidden": 8},
        "eval": {"metrics": [{"name": "w2"}], "writers": []}}

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10) | st.sampled_from(NAMES)
           | st.binary(max_size=4) | st.just(float("nan")) | st.just(2**80))
keys = st.sampled_from(SECTIONS + OPTIONS) | st.text(max_size=6) | st.integers(-3, 3) | st.none()
trees = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(keys, c, max_size=5), max_leaves=25)
REAL_PATHS = ["trainer.steps", "trainer.lr", "trainer.batch_size", "trainer.grad_accum", "trainer.betas",
              "trainer.loss_weights.x", "trainer.ema_decay", "trainer.device", "model.hidden", "model.depth",
              "model.name", "data.name", "data.n", "data.noise", "path.name", "path.fields.x.name", "solver.name",
              "solver.steps", "eval.metrics.0.name", "eval.metrics.0.num_reference", "eval.metrics", "eval.every",
              "source.name", "coupling.name", "name", "seed", "callbacks", "data", "model.time_dim"]
PLAUSIBLE = ["12", "0", "-1", "1e-3", "1.0e-3", ".inf", ".nan", "moons", "mlp", "w2", "euler", "discrete", "cpu",
             "null", "[]", "{}", "[0.9, 0.99]", "[1, 2, 3]", "{name: w2}", "[{name: w2}]", "true", "'12'", "abc", ""]
plausible_values = st.sampled_from(PLAUSIBLE).map(lambda v: parse_yaml(f"v: {v}")["v"] if v else "")


def _mutate(changes: list[tuple[str, object]]) -> dict:
    """BASE with ``path -> value`` set, creating or replacing whatever lies on the way."""
    data = copy.deepcopy(BASE)
    for path, value in changes:
        node = data
        *head, last = path.split(".")
        for k in head:
            if isinstance(node, list):
                node = node[int(k) % len(node)] if node and k.isdecimal() else {}
                continue
            if not isinstance(node.get(k), (dict, list)):
                node[k] = {}
            node = node[k]
        if isinstance(node, dict):
            node[last] = value
    return data


mutated = st.lists(st.tuples(st.sampled_from(REAL_PATHS), plausible_values | trees), min_size=1, max_size=3).map(_mutate)
components = st.fixed_dictionaries({"name": st.sampled_from(NAMES)}, optional={o: trees for o in OPTIONS[1:12]})
recipe_like = mutated | st.fixed_dictionaries({}, optional={s: trees | components | st.lists(components, max_size=2)
                                                            for s in SECTIONS})

YAML_TOKENS = ["data:", "model:", "trainer:", "path:", "name:", " moons", " mlp", "{", "}", "[", "]", ",", ": ", ":",
               "\n", "  ", "\t", "- ", "&a ", "*a", "!!python/object/apply:os.system ", "!!binary ", "!!set ", "'",
               '"', "#", "? ", "|", ">", "---", "...", "%YAML 1.2\n", "1e400", ".nan", "-.inf", "0x1F", "~", "null",
               "yes", "2020-01-01", "<<: *a", "\\", "\x00", "\ufeff", "é", "steps: ", "lr: -1", "fields: "]
yaml_text = st.text(max_size=200) | st.lists(st.sampled_from(YAML_TOKENS) | st.text(max_size=3), max_size=40).map("".join)

key_paths = st.lists(st.sampled_from(SECTIONS + OPTIONS) | st.text(max_size=4) | st.integers(-2, 3).map(str),
                     min_size=0, max_size=4).map(".".join)
overrides = st.lists(st.text(max_size=30) | st.builds(lambda k, v: f"{k}={v}", key_paths, yaml_text)
                     | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(REAL_PATHS), st.sampled_from(PLAUSIBLE))
                     | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(REAL_PATHS), st.sampled_from(PLAUSIBLE))
                     | st.builds(lambda k, v: f"{k}={v}", key_paths, st.sampled_from(NAMES + ["[]", "{}", "[1,2]"])),
                     max_size=4)


def _recipe_or_error(fn, *args):
    """Call fn; a RecipeError is fine, any other exception fails the test (by propagating)."""
    try:
        out = fn(*args)
    except RecipeError as exc:
        assert exc.what and str(exc).startswith(exc.what)
        event(f"{fn.__name__}: RecipeError")
        return None
    event(f"{fn.__name__}: ok")
    return out


@FUZZ
@given(yaml_text)
@example("a: " + "[" * 3000)
@example("data: &a {name: moons, x: *a}\nmodel: {name: mlp}")
@example("? [a, b]\n: 1\n")
@example("model: !!python/object/apply:os.system [echo]")
@example("\x00")
def test_parse_yaml_gives_a_mapping_or_recipe_error(text):
    data = _recipe_or_error(parse_yaml, text, "fuzz.yaml")
    if data is not None:
        assert isinstance(data, dict)
        rec = _recipe_or_error(validate, data, REG, "fuzz.yaml")
        assert rec is None or isinstance(rec, Recipe)


@FUZZ
@given(recipe_like)
@example({"data": {"name": "moons", 1: 2}, "model": {"name": "mlp"}})
@example({"data": {"name": "moons"}, "model": {"name": "mlp", "hidden": float("inf")}})
@example({"data": {"name": "moons"}, "model": {"name": "mlp"}, "trainer": {"loss_weights": {"x": float("nan")}}})
@example({"data": {"name": "moons"}, "model": {"name": "mlp"}, "path": {"name": "condot", "fields": {"x": "discrete"}}})
@example({None: 1, 3: [], "data": b"x"})
def test_validate_gives_a_recipe_or_recipe_error(data):
    rec = _recipe_or_error(validate, data, REG, "fuzz.yaml")
    if rec is not None:
        assert isinstance(rec, Recipe)
        # a valid recipe survives the round trip through the run directory's recipe.yaml
        assert validate(parse_yaml(rec.to_yaml()), REG).to_dict() == rec.to_dict()


@FUZZ
@given(overrides)
@example(["eval.metrics.²=3"])
@example(["eval.metrics.².name=w2"])
@example(["a=" + "[" * 3000])
@example(["model.hidden.x=1", "=", "..=1", ".a=1"])
@example(["eval.metrics.-1.name=w2", "eval.metrics.-2.name=w2"])
@example(["data=null", "data.name=moons"])
def test_overrides_give_a_recipe_or_recipe_error(ovs):
    data = copy.deepcopy(BASE)
    out = _recipe_or_error(apply_overrides, data, ovs)
    if out is not None:
        rec = _recipe_or_error(validate, out, REG, "fuzz.yaml")
        assert rec is None or isinstance(rec, Recipe)


@FUZZ
@given(yaml_text, overrides)
def test_text_then_overrides_then_validate(text, ovs):
    data = _recipe_or_error(parse_yaml, text, "fuzz.yaml")
    if data is not None:
        data = _recipe_or_error(apply_overrides, data, ovs)
        if data is not None:
            _recipe_or_error(validate, data, REG, "fuzz.yaml")


@pytest.mark.parametrize("ov,expect", [("trainer.steps=12", 12), ("trainer.lr=1e-4", 1e-4),
                                       ("eval.metrics.0.num_reference=50", 50), ("model.hidden=16", 16)])
def test_overrides_still_work(ov, expect):
    rec = validate(apply_overrides(copy.deepcopy(BASE), [ov]), REG)
    section, *rest = ov.split("=")[0].split(".")
    node = rec.to_dict()[section]
    for k in rest:
        node = node[int(k)] if isinstance(node, list) else node[k]
    assert node == expect
