"""Recipes that cannot mean what they say are refused by ``fmkit recipe validate`` (and before
anything is built), naming the key: a key given twice, option values out of range, toy-data options
that do not fit together, a loss weight for a field the data lacks, and YAML aliases that expand
without bound (refused at once, in a short message).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from reliability_helpers import TINY, clean_error, cli, isolate, squash


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


@pytest.mark.parametrize("text, key, line", [
    ("data: {name: moons}\nmodel: {name: mlp}\nmodel: {name: mlp, hidden: 8}\n", "model", 3),
    ("data: {name: moons, n: 300, n: 400}\nmodel: {name: mlp}\n", "n", 1),
    ("data: {name: moons}\nmodel: {name: mlp}\ntrainer:\n  steps: 5\n  lr: 0.1\n  steps: 7\n", "steps", 6),
])
def test_a_key_given_twice_is_refused_naming_both_lines(text, key, line):
    """A key given twice in one mapping is refused naming its lines (YAML keeps the last value silently:
    a second `model:` dropped the first)."""
    Path("dup.yaml").write_text(text)
    r = cli("recipe", "validate", "dup.yaml")
    assert r.code == 2, r.text
    msg = squash(r.err)
    assert f"the key {key!r} appears twice in one mapping" in msg and f"where: dup.yaml, line {line}," in msg, msg


@pytest.mark.parametrize("extra, needle", [
    ("trainer: {betas: [1.5, 0.999]}", "trainer.betas.0: Input should be less than 1"),
    ("trainer: {steps: true}", "trainer.steps: Input should be a valid integer (got True)"),
    ("trainer: {steps: 1.0e+26}", "trainer.steps: Input should be a valid integer"),
    ("trainer: {cpu_threads: 100000}", "trainer.cpu_threads: Input should be less than or equal to 1024"),
    ("trainer: {loss_weights: {x: -1.0}}", "trainer.loss_weights.x: Input should be greater than or equal to 0"),
    ("seed: 1180591620717411303424", "seed: Input should be less than 9223372036854775808"),
])
def test_invalid_option_values_are_refused_naming_the_key(extra, needle):
    """Out-of-range or mistyped option values are refused naming the key, before anything runs: they used
    to train to NaN, train one step, hang, train away from the data or crash."""
    Path("v.yaml").write_text(f"data: {{name: moons}}\nmodel: {{name: mlp}}\n{extra}\n")
    r = cli("recipe", "validate", "v.yaml")
    assert r.code == 2 and needle in squash(r.err), r.text


@pytest.mark.parametrize("data, needle", [
    ("{name: gaussian, mean: [0, 0], cov: [[1, 2], [2, 1]]}", "cov must be positive definite"),
    ("{name: gaussian, mean: [0, 0, 0], cov: [[1, 0], [0, 1]]}", "cov must be 3 x 3 to match the mean of length 3"),
    ("{name: eight_gaussians, radius: .inf}", "data.radius: Input should be a finite number"),
])
def test_invalid_component_options_are_refused(data, needle):
    Path("v.yaml").write_text(f"data: {data}\nmodel: {{name: mlp}}\n")
    r = cli("recipe", "validate", "v.yaml")
    assert r.code == 2 and needle in squash(r.err), r.text


def test_loss_weight_for_a_field_the_data_lacks_is_refused():
    """A loss weight for a field the data lacks is refused (a misspelt field name was ignored silently)."""
    text = TINY.replace("keep_checkpoints: 2}", "keep_checkpoints: 2, loss_weights: {pos: 2.0}}")
    Path("w.yaml").write_text(text)
    r = cli("train", "w.yaml", "--out", "w")
    assert r.code == 2, r.text
    assert "trainer.loss_weights names ['pos'], which the data does not have" in squash(r.err), r.text


def _alias_bomb(levels: int = 8, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\ndata: {{name: moons, n: *a{levels}}}\nmodel: {{name: mlp}}\n"


def test_a_yaml_alias_bomb_is_refused_at_once_with_a_short_message():
    """A YAML alias bomb is refused at once with a short message, by `recipe validate` and `train`,
    instead of being expanded (which took minutes and printed a huge recipe)."""
    Path("bomb.yaml").write_text(_alias_bomb())
    t = time.perf_counter()
    r = cli("recipe", "validate", "bomb.yaml")
    assert time.perf_counter() - t < 5
    msg = clean_error(r, "recipe expands to more than 100,000 values through YAML aliases", "where: bomb.yaml",
                      "fix: write the values out")
    assert len(r.text) < 500, len(r.text)
    r = cli("train", "bomb.yaml", "--out", "run")
    clean_error(r, "through YAML aliases")
    assert not Path("run").exists(), msg


def test_a_self_referring_alias_and_a_bomb_through_set_are_refused():
    Path("rec.yaml").write_text("a: &a [*a]\ndata: {name: moons}\nmodel: {name: mlp}\n")
    clean_error(cli("recipe", "validate", "rec.yaml"), "recipe has a YAML alias that contains itself")
    Path("tiny.yaml").write_text(TINY)
    bomb = "[" + ", ".join(["&b0 [" + ", ".join(["x"] * 50) + "]"] + ["*b0"] * 49) + "]"
    bomb = "{k: &c " + bomb + ", l: [" + ", ".join(["*c"] * 50) + "]}"
    clean_error(cli("recipe", "validate", "tiny.yaml", "--set", f"data.n={bomb}"), "through YAML aliases",
                "where: --set")


def test_aliases_of_ordinary_size_still_work():
    text = TINY.replace("model: {name: mlp, hidden: 8, depth: 1, time_dim: 4}",
                        "model: &m {name: mlp, hidden: 8, depth: 1, time_dim: 4}")
    Path("ok.yaml").write_text(text + "eval: {metrics: [{name: w2}, {name: w2}]}\n".replace("{name: w2}, {name: w2}",
                                                                                          "&w {name: w2}"))
    r = cli("recipe", "validate", "ok.yaml")
    assert r.code == 0, r.text
