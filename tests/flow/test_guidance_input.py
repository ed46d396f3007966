"""Guidance as a model input (improved MeanFlow): omega drawn per example in training and given to the
model, so one network samples at any guidance scale in one jump. What is proved: the embedding is zero at
omega = 1 (the model without the input, bit for bit); the objective mixes with each example's own omega and
tells the model that omega (1 where the label was dropped); a drawn range of one value is the folded fixed
scale; sampling hands the scale to the model in one call; what cannot work is refused with a fix; and the
CLI trains such a run and samples it at two scales."""

from __future__ import annotations

import fmkit
import pytest
import torch
from fmkit.errors import ModelError, RecipeError, TrainingError
from fmkit.flow.guidance import ClassifierFreeGuidance, with_guidance
from fmkit.flow.guidance_input import GuidanceEmbedding, GuidanceInput, takes_guidance
from fmkit.flow.objectives import AverageVelocityJVP, MeanFlowObjective
from fmkit.flow.paths import AffinePath, CondOTScheduler
from torch import nn


def condot() -> AffinePath:
    return AffinePath(CondOTScheduler())


def test_the_guidance_embedding_is_zero_at_omega_one_only():
    emb = GuidanceEmbedding(8)
    out = emb(torch.tensor([1.0, 1.0 + 1e-3, 3.0, 1.0]))
    assert torch.equal(out[0], torch.zeros(8)) and torch.equal(out[3], torch.zeros(8))
    assert 0 < out[1].abs().max() < 0.1 * out[2].abs().max()


def test_the_mlp_meets_the_guidance_contract_and_a_plain_one_says_how_to_get_it():
    from fmkit.testing import check_two_time_model

    ds = fmkit.TensorDataset({"x": torch.randn(16, 2), "cond": torch.randint(0, 3, (16,))}, num_cond_classes=3)
    model = fmkit.MLP(2, hidden=16, depth=1, time_dim=8, num_classes=3, two_times=True, guidance_input=True)
    assert takes_guidance(model) and takes_guidance(AverageVelocityJVP(model))
    check_two_time_model(model, ds)  # omega = 1 is the model without guidance; another omega moves it
    plain = fmkit.MLP(2, hidden=16, depth=1, time_dim=8, num_classes=3, two_times=True)
    assert not takes_guidance(plain)
    with pytest.raises(ModelError, match="without the guidance input") as e:
        plain({"x": torch.randn(2, 2)}, torch.rand(2), torch.tensor([0, 1]), guidance=torch.ones(2))
    assert "guidance_input: true" in e.value.fix


class Spy(nn.Module):
    """u = label + omega (as told; 1 when not told), constant in z and t: d/dt u = 0, so u_tgt = v~.
    Records the omega of each call."""

    guidance_input = True

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.seen: list[torch.Tensor | None] = []

    def forward(self, x_t, t, cond=None, *, r=None, guidance=None):
        self.seen.append(None if guidance is None else guidance.detach().clone())
        g = torch.ones(t.shape[0]) if guidance is None else guidance
        c = torch.zeros(t.shape[0]) if cond is None else cond.float()
        return {"x": torch.zeros_like(x_t["x"]) + (c + g)[:, None] + self.w}


def test_each_example_is_guided_with_its_own_omega_and_the_model_is_told_it():
    obj = MeanFlowObjective(condot(), guidance_range=(1.0, 4.0), cond_dropout=0.5, null_class=7)
    cond, cond_in = torch.tensor([1, 2, 3, 4]), torch.tensor([1, 7, 3, 7])  # examples 1 and 3 dropped
    omega = torch.tensor([1.5, 2.0, 3.0, 4.0])
    v = {"x": torch.ones(4, 2)}
    spy = Spy()
    got = obj.guided_velocity(AverageVelocityJVP(spy), {"x": torch.zeros(4, 2)}, torch.rand(4), cond, cond_in, v,
                              omega)["x"]
    assert spy.seen == [None]  # the unconditional branch u(z, t, t | null) at omega = 1
    u_null = 7.0 + 1.0
    kept = omega * 1.0 + (1.0 - omega) * u_null  # omega v + (1 - omega) u_null, row by row
    want = torch.where(torch.tensor([True, False, True, False])[:, None], kept[:, None].expand(4, 2), v["x"])
    torch.testing.assert_close(got, want)
    told = obj.model_guidance(omega, cond_in)
    torch.testing.assert_close(told, torch.tensor([1.5, 1.0, 3.0, 1.0]))  # a dropped label's target is plain v
    t = torch.rand(4)
    u, target = obj.prediction_and_target(AverageVelocityJVP(spy), {"x": torch.zeros(4, 2)}, t, t + 0.1, cond_in,
                                          {"x": got}, told)
    torch.testing.assert_close(spy.seen[-1], told)  # the JVP's forward got the same omega
    torch.testing.assert_close(target["x"], got)    # d/dt u = 0 here: the target is the guided velocity


def test_a_range_of_one_value_is_the_folded_fixed_scale():
    """guidance_range (w, w) mixes exactly as guidance_scale w for a model that ignores omega."""
    class Shift(nn.Module):
        def forward(self, x_t, t, cond=None, *, r=None, guidance=None):
            return {"x": torch.sin(x_t["x"]) + cond.float()[:, None] * t[:, None]}

    torch.manual_seed(0)
    x_t, t, cond = {"x": torch.randn(6, 2)}, torch.rand(6), torch.tensor([0, 1, 2, 0, 1, 2])
    cond_in, v = torch.tensor([0, 3, 2, 0, 3, 2]), {"x": torch.randn(6, 2)}
    fixed = MeanFlowObjective(condot(), guidance_scale=2.5, cond_dropout=0.1, null_class=3)
    drawn = MeanFlowObjective(condot(), guidance_range=(2.5, 2.5), cond_dropout=0.1, null_class=3)
    omega = drawn.guidance_scales(6, torch.device("cpu"))
    assert torch.equal(omega, torch.full((6,), 2.5))
    m = AverageVelocityJVP(Shift())
    torch.testing.assert_close(drawn.guided_velocity(m, x_t, t, cond, cond_in, v, omega)["x"],
                               fixed.guided_velocity(m, x_t, t, cond, cond_in, v)["x"])


def test_a_training_step_with_drawn_scales_runs_and_reaches_the_guidance_embedding():
    torch.manual_seed(0)
    model = fmkit.MLP(2, hidden=16, depth=1, time_dim=8, num_classes=3, two_times=True, guidance_input=True)
    obj = MeanFlowObjective(condot(), guidance_range=(1.0, 3.0), cond_dropout=0.2, null_class=3)
    loss, per_field = obj(obj.training_module(model), {"x": torch.randn(32, 2), "cond": torch.randint(0, 3, (32,))})
    loss.backward()
    assert torch.isfinite(loss) and set(per_field) == {"x"}
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.guidance.parameters())


def test_what_cannot_work_is_refused_with_a_fix():
    obj = MeanFlowObjective(condot(), guidance_range=(1.0, 3.0), cond_dropout=0.1, null_class=3)
    with pytest.raises(ModelError, match="built without one") as e:
        obj.training_module(fmkit.MLP(2, num_classes=3, two_times=True))
    assert "guidance_input: true" in e.value.fix
    with pytest.raises(TrainingError, match="fixes omega, and guidance_range"):
        MeanFlowObjective(condot(), guidance_scale=2.0, guidance_range=(1.0, 3.0), cond_dropout=0.1)
    with pytest.raises(TrainingError, match="trainer.cond_dropout is 0"):
        MeanFlowObjective(condot(), guidance_range=(1.0, 3.0))
    with pytest.raises(ValueError, match="0 < low <= high"):
        MeanFlowObjective(condot(), guidance_range=(3.0, 1.0), cond_dropout=0.1)


def test_sampling_hands_the_scale_to_a_model_that_takes_it_in_one_call():
    spy = Spy()
    guided = with_guidance(spy, 2.5, 3)
    assert isinstance(guided, GuidanceInput)
    out = guided({"x": torch.zeros(2, 2)}, torch.rand(2), torch.tensor([0, 1]))
    assert len(spy.seen) == 1 and torch.equal(spy.seen[0], torch.full((2,), 2.5))
    torch.testing.assert_close(out["x"][:, 0], torch.tensor([2.5, 3.5]))
    assert with_guidance(spy, 1.0, 3) is spy and with_guidance(spy, None, 3) is spy
    assert isinstance(with_guidance(fmkit.MLP(2, num_classes=3), 2.5, 3), ClassifierFreeGuidance)
    guided({"x": torch.zeros(2, 2)}, torch.rand(2), None)
    assert spy.seen[-1] is None  # an unconditional call has no guidance to pass


def test_an_embedding_the_objective_never_feeds_is_declared_unused_to_ddp():
    from fmkit.engine.setup import idle_r_embedding

    model = fmkit.MLP(2, num_classes=3, two_times=True, guidance_input=True)
    assert idle_r_embedding(model, MeanFlowObjective(condot(), cond_dropout=0.1, null_class=3))
    assert not idle_r_embedding(model, MeanFlowObjective(condot(), guidance_range=(1.0, 2.0), cond_dropout=0.1,
                                                         null_class=3))
    assert not idle_r_embedding(fmkit.MLP(2, num_classes=3, two_times=True),
                                MeanFlowObjective(condot(), cond_dropout=0.1, null_class=3))


def test_the_recipe_lets_a_guidance_input_run_pick_its_scale_at_sampling():
    from fmkit.app.recipe import parse_yaml, validate
    from reliability_helpers import TINY, fresh_registry

    base = TINY.replace("solver: {name: euler, steps: 4}\n", "")
    ok = validate(parse_yaml(base + "objective: {name: meanflow, guidance_range: [1, 3]}\neval: {guidance_scale: 2}\n"),
                  fresh_registry())
    assert ok.objective.guidance_range == (1.0, 3.0) and ok.eval.guidance_scale == 2.0
    with pytest.raises(RecipeError, match="guidance folded into training") as e:
        validate(parse_yaml(base + "objective: {name: meanflow}\neval: {guidance_scale: 2}\n"), fresh_registry())
    assert "guidance_range" in e.value.fix
    for bad in ("[3, 1]", "[0, 2]"):
        with pytest.raises(RecipeError, match="0 < low <= high"):
            validate(parse_yaml(base + f"objective: {{name: meanflow, guidance_range: {bad}}}\n"), fresh_registry())
    with pytest.raises(RecipeError, match="keep one"):
        validate(parse_yaml(base + "objective: {name: meanflow, guidance_scale: 2, guidance_range: [1, 3]}\n"),
                 fresh_registry())


def test_the_cli_trains_a_guidance_input_run_and_samples_it_at_the_scale_asked(tmp_path):
    from reliability_helpers import cli
    from safetensors.torch import load_file

    recipe = tmp_path / "r.yaml"
    recipe.write_text("""\
name: guidance_input
seed: 0
data: {name: moons, n: 512, conditional: true}
model: {name: mlp, hidden: 16, depth: 1, time_dim: 8, two_times: true, guidance_input: true}
objective: {name: meanflow, guidance_range: [1.0, 3.0]}
trainer: {steps: 20, batch_size: 32, device: cpu, progress: false, checkpoint_every: 20, cond_dropout: 0.2}
eval: {every: 0, num_samples: 16, writers: [], guidance_scale: 2.0}
""")
    run = tmp_path / "run"
    r = cli("train", recipe, "--out", run)
    assert r.code == 0, r.text
    got = {}
    for w in ("1", "3"):
        r = cli("sample", run, "--steps", "1", "-n", "64", "--guidance", w, "--out", f"w{w}", "--seed", "1")
        assert r.code == 0, r.text
        got[w] = load_file(str(run / "samples" / f"w{w}" / "samples.safetensors"))["x"]
    assert (got["1"] - got["3"]).abs().max() > 1e-4  # the scale reached the model, still one jump
