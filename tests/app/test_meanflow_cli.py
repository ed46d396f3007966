"""A MeanFlow run from the CLI: the recipe section, the solver that follows the objective, one-step
sampling and evaluation (`fmkit sample/evaluate RUN --steps 1`), and what is refused with a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fmkit.app.recipe import parse_yaml, validate
from fmkit.errors import RecipeError
from reliability_helpers import TINY, cli, fresh_registry
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "toy_meanflow.yaml"


def _recipe(text: str):
    return validate(parse_yaml(text), fresh_registry())


def test_a_meanflow_recipe_samples_by_jumps_unless_it_names_another_solver():
    rec = _recipe(TINY.replace("solver: {name: euler, steps: 4}\n", "") + "objective: {name: meanflow}\n")
    assert rec.solver.spec() == {"name": "meanflow", "steps": 1}
    assert rec.objective.equal_fraction == 0.75 and rec.objective.adaptive_p == 1.0  # the paper's defaults
    assert validate(rec.to_dict(), fresh_registry()).solver.spec() == rec.solver.spec()  # the resolved recipe
    named = _recipe(TINY + "objective: {name: meanflow}\n")  # its euler integrates u(z, t, t) as an ODE
    assert named.solver.name == "euler"
    assert _recipe(TINY.replace("solver: {name: euler, steps: 4}\n", "")).solver.name == "euler"  # cfm: as before


@pytest.mark.parametrize("extra,match,where", [
    ("solver: {name: meanflow}\n", "which objective 'cfm' does not train", "solver.name"),
    ("objective: {name: meanflow}\nsolver: {name: meanflow}\neval: {guidance_scale: 2.0}\n",
     "a MeanFlow jump has its guidance folded into training", "eval.guidance_scale"),
    ("objective: {name: meanflow, equal_fraction: 1.5}\n", "equal_fraction", None),
    ("objective: {name: meanflow, guidance: 2}\n", r"objective\.meanflow\.guidance: unknown option", None),
])
def test_what_a_meanflow_recipe_cannot_mean_is_refused(extra, match, where):
    text = TINY.replace("solver: {name: euler, steps: 4}\n", "") + extra
    with pytest.raises(RecipeError, match=match) as e:
        _recipe(text)
    if where is not None:
        assert e.value.where == where and e.value.fix


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mf") / "run"
    r = cli("train", RECIPE, "--out", out, "--set", "trainer.steps=60", "--set", "trainer.batch_size=64",
            "--set", "trainer.checkpoint_every=60", "--set", "trainer.progress=false", "--set", "trainer.device=cpu",
            "--set", "eval.every=0", "--set", "eval.num_samples=200", "--set", "eval.writers=[]")
    assert r.code == 0, r.text
    return out


def test_one_step_sampling_from_the_cli_is_the_jump_x1_equals_x0_plus_u(run: Path):
    r = cli("sample", run, "--steps", "1", "-n", "300", "--out", "one", "--seed", "4")
    assert r.code == 0, r.text
    got = load_file(str(run / "samples" / "one" / "samples.safetensors"))["x"]
    # the same in the library: the run's EMA model, x0 from its source with the CLI's seeding, one jump
    from fmkit.app.inference import load_for_inference
    from fmkit.engine.evaluation import sample_in_chunks
    from fmkit.flow.solvers import FixedStepSolver, MeanFlowSolver

    rec, comps, _, _ = load_for_inference(run, None)
    model, cpu = comps.model.eval(), torch.device("cpu")
    args = (comps.path, comps.source)
    jump = sample_in_chunks(model, *args, MeanFlowSolver(1), comps.dataset, 300, rec.eval.chunk_size, cpu, 4)["x"]
    torch.testing.assert_close(got, jump, rtol=0, atol=1e-6)
    euler = sample_in_chunks(model, *args, FixedStepSolver("euler", 1), comps.dataset, 300, rec.eval.chunk_size,
                             cpu, 4)["x"]
    assert (got - euler).abs().max() > 1e-2  # not one Euler step of the instantaneous velocity u(z, 0, 0)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_evaluate_steps_jumps_and_says_so(run: Path, steps: int):
    r = cli("evaluate", run, "--steps", str(steps), "-n", "200")
    assert r.code == 0, r.text
    assert f"meanflow, {steps} steps" in " ".join(r.text.split()) and "w2" in r.text


def test_sampling_guidance_and_a_cfm_run_with_the_jump_are_refused(run: Path):
    r = cli("sample", run, "--steps", "1", "-n", "10", "--guidance", "2.0")
    assert r.code != 0
    # the toy data is unconditional: the guidance is refused for that before any jump
    assert "--guidance" in r.text
    r = cli("evaluate", run, "--solver", "meanflow", "--set", "objective={name: cfm}", "--set", "solver.name=euler")
    assert r.code != 0 and "this run's objective 'cfm' did not train" in r.text
    r = cli("evaluate", run, "--solver", "euler", "--steps", "20", "-n", "200")  # the ODE of u(z, t, t) is allowed
    assert r.code == 0 and "euler, 20 steps" in " ".join(r.text.split()), r.text


def test_a_run_from_before_two_times_still_loads_and_a_two_time_model_does_not_take_it():
    """A checkpoint's fingerprint from before the mlp had `two_times` and `time_max_freq` lacks them;
    at their off defaults (False, None) they are no difference, at another value they are."""
    from fmkit.engine.fingerprint import fingerprint_diff

    old = {"model": {"name": "mlp", "hidden": 8, "depth": 1, "time_dim": 4, "field": "x"}}
    ours = {"model": {**old["model"], "two_times": False, "time_max_freq": None}}
    assert fingerprint_diff(old, ours, ("model",)) == []
    two = {"model": {**old["model"], "two_times": True, "time_max_freq": None}}
    assert fingerprint_diff(old, two, ("model",)) == ["model.two_times: absent in the checkpoint, True in this recipe"]
    # a key the checkpoint holds and we lack is still a difference (only options added since are forgiven)
    assert fingerprint_diff(ours, old, ("model",)) == ["model.time_max_freq: None in the checkpoint, absent in this "
                                                       "recipe", "model.two_times: False in the checkpoint, absent in "
                                                       "this recipe"]


def test_evaluate_loads_a_run_whose_checkpoint_predates_the_new_model_options(tmp_path):
    import json

    out = tmp_path / "old"
    r = cli("train", ROOT / "recipes" / "toy_moons.yaml", "--out", out, "--set", "trainer.steps=4", "--set",
            "trainer.checkpoint_every=4", "--set", "trainer.progress=false", "--set", "trainer.device=cpu",
            "--set", "eval.every=0", "--set", "eval.metrics=[]", "--set", "eval.writers=[]")
    assert r.code == 0, r.text
    meta = out / "checkpoints" / "step_000000004" / "meta.json"
    data = json.loads(meta.read_text())
    for key in ("two_times", "time_max_freq"):  # what a checkpoint written before them holds
        del data["fingerprint"]["model"][key]
    meta.write_text(json.dumps(data))
    from fmkit.engine.checkpoint import MANIFEST
    from fmkit.engine.files import _sha256

    manifest = json.loads((meta.parent / MANIFEST).read_text())  # the checkpoint's own record of its files
    manifest["files"]["meta.json"] = _sha256(meta)
    (meta.parent / MANIFEST).write_text(json.dumps(manifest))
    r = cli("evaluate", out, "-n", "50", "--set", "eval.metrics=[{name: w2}]")
    assert r.code == 0, r.text
