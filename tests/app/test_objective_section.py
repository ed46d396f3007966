"""A recipe chooses its loss in an ``objective:`` section (default ``{name: cfm}``): the Trainer builds
that objective once from its own path, source, coupling, time sampler, condition dropout, null class
and loss weights; an unknown objective or option is refused before anything is built, naming the
objectives there are."""

from __future__ import annotations

import fmkit
import pytest
import torch
from fmkit.app.recipe import parse_yaml, validate
from fmkit.app.run import build_trainer
from fmkit.errors import RecipeError
from fmkit.flow.objectives import CFMObjective
from pydantic import ValidationError
from reliability_helpers import TINY, fresh_registry


def _recipe(extra: str = ""):
    return validate(parse_yaml(TINY + extra), fresh_registry())


def test_a_recipe_without_the_section_trains_the_cfm_objective_and_says_so():
    rec = _recipe()
    # the resolved recipe states the objective with its options' defaults (no self-conditioning)
    assert rec.objective.name == "cfm" and rec.to_dict()["objective"] == {"name": "cfm", "self_condition": 0.0}
    assert validate(rec.to_dict(), fresh_registry()).objective == rec.objective  # the resolved recipe reloads


def test_the_trainer_builds_its_objective_from_its_own_parts_and_options():
    rec = _recipe("objective: {name: cfm}\n")
    rec.trainer.loss_weights = {"x": 0.5}
    rec.trainer.time_sampler, rec.trainer.time_grid = "grid", [0.25]
    tr = build_trainer(rec, None, fresh_registry())
    obj = tr.objective
    assert isinstance(obj, CFMObjective)
    assert obj.path is tr.path and obj.source is tr.source and obj.coupling is tr.coupling
    assert obj.time(3, torch.device("cpu")).tolist() == [0.25] * 3  # trainer.time_sampler's draw
    assert obj.weights == {"x": 0.5}
    batch = {"x": torch.randn(8, 2)}
    torch.manual_seed(0)
    loss, _ = tr.loss(batch)
    torch.manual_seed(0)
    assert torch.equal(loss, obj(tr.model, batch)[0])  # the step's loss is the objective's


def test_the_null_class_and_condition_dropout_reach_the_objective():
    ds = fmkit.TensorDataset({"x": torch.randn(64, 2), "cond": torch.randint(0, 3, (64,))}, num_cond_classes=3)
    tr = fmkit.Trainer(fmkit.MLP(2, hidden=8, depth=1, time_dim=4, num_classes=4), ds,
                       options={"steps": 1, "batch_size": 8, "device": "cpu", "cond_dropout": 0.2})
    assert (tr.objective.null_class, tr.objective.cond_dropout) == (3, 0.2)


@pytest.mark.parametrize("section,message", [
    ("objective: {name: meanflw}\n", r"objective: must be \{name: <objective>\} with one of the objectives: cfm, "
                                     r"meanflow"),
    ("objective: {name: cfm, ratio: 0.25}\n", r"objective\.cfm\.ratio: unknown option"),
])
def test_an_unknown_objective_or_option_is_refused_naming_the_objectives(section, message):
    with pytest.raises(RecipeError, match=message):
        _recipe(section)


def test_the_library_trainer_refuses_an_unknown_objective():
    with pytest.raises(ValidationError, match="one of the objectives: cfm, meanflow"):
        fmkit.Trainer(fmkit.MLP(2, hidden=8, depth=1, time_dim=4), fmkit.TensorDataset(torch.randn(64, 2)),
                      options={"steps": 1, "batch_size": 8, "device": "cpu"}, objective={"name": "meanflw"})
