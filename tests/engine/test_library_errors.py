"""Mistakes a library user makes with the Trainer and the core pieces fail at once with an FmkitError
(or a ValueError/TypeError for a wrong argument) that names the culprit, instead of training on
garbage or dying in a numeric library."""

from __future__ import annotations

import subprocess
import sys

import fmkit
import pytest
import torch
from fmkit.engine import checkpoint as ck
from fmkit.engine.metrics_log import read_metrics
from fmkit.errors import ContractError, ModelError, NonFiniteDataError, TrainingError
from torch import nn

OPTS = dict(steps=6, batch_size=16, lr=1e-3, device="cpu", progress=False, log_every=2, checkpoint_every=3)


class Net(nn.Module):
    def __init__(self, out: int = 2) -> None:
        super().__init__()
        self.lin = nn.Linear(3, out)

    def forward(self, x, t):
        return self.lin(torch.cat([x, t[:, None]], 1))


def data(n: int = 64, bad_row: int | None = None) -> torch.Tensor:
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    if bad_row is not None:
        x[bad_row, 1] = float("nan")
    return x


def test_model_output_of_the_wrong_shape_stops_the_first_step():
    """A [B,1] output against [B,2] data would broadcast in the MSE and train to garbage."""
    tr = fmkit.Trainer(fmkit.TensorModel(Net(out=1)), fmkit.TensorDataset(data()), options=OPTS)
    before = [p.clone() for p in tr.model.parameters()]
    with pytest.raises(ModelError, match=r"output for field 'x' has shape \(16, 1\); it must be \(16, 2\)"):
        tr.fit()
    assert tr.step == 0 and all(torch.equal(a, b) for a, b in zip(before, tr.model.parameters()))


@pytest.mark.parametrize("coupling", [fmkit.ExactOTCoupling(), fmkit.SinkhornCoupling()])
@pytest.mark.parametrize("pairing", ["step", "loader"])
def test_nan_in_the_data_under_an_ot_coupling_names_the_field_and_keeps_the_last_state(tmp_path, coupling, pairing):
    """The OT solvers used to die with scipy's "matrix contains invalid numeric entries" or torch's
    "probability tensor contains inf/nan" (an internal error, no checkpoint)."""
    tr = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data(bad_row=5)), coupling=coupling,
                       options=dict(OPTS, steps=40, pairing=pairing), run_dir=tmp_path / "run")
    with pytest.raises(TrainingError, match=r"NaN/Inf in field\(s\) \['x'\].*saved as a checkpoint") as ei:
        tr.fit()
    assert ei.value.fix == "clean the data"
    saved = ck.find_latest(tmp_path / "run" / "checkpoints")
    assert saved is not None and saved.name == ck.step_dir_name(tr.step)


def test_nan_without_a_run_directory_does_not_claim_a_checkpoint():
    tr = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data(bad_row=5)), options=dict(OPTS, steps=40))
    with pytest.raises(TrainingError, match="nothing was saved"):
        tr.fit()


def test_couplings_refuse_non_finite_or_unequal_batches_and_bad_epsilon():
    x0, x1 = torch.randn(8, 2), data(8, bad_row=3)
    for c in (fmkit.ExactOTCoupling(), fmkit.SinkhornCoupling()):
        with pytest.raises(NonFiniteDataError, match="NaN/Inf in x1.x") as ei:
            c(x0, x1)
        assert ei.value.fields == ["x1.x"]
        with pytest.raises(ValueError, match=r"field 'x' of x1 has shape \(6, 2\), x0 has \(8, 2\)"):
            c(x0, torch.randn(6, 2))
    for eps in (0.0, -1.0, float("nan")):  # -1 used to give the anti-OT (cost-maximising) pairing
        with pytest.raises(ValueError, match="epsilon must be a finite number > 0"):
            fmkit.SinkhornCoupling(epsilon=eps)


def test_guidance_without_condition_classes_is_refused():
    """Dropped labels used to become label 0, a real class, and guidance was silently skipped."""
    ds = fmkit.TensorDataset({"x": data(), "cond": torch.randint(0, 3, (64,))})
    for kw in ({"options": dict(OPTS, cond_dropout=0.2)}, {"eval_options": {"guidance_scale": 2.0}}):
        with pytest.raises(TrainingError, match="num_cond_classes"):
            fmkit.Trainer(fmkit.TensorModel(Net()), ds, **{"options": OPTS, **kw})
    ok = fmkit.TensorDataset({"x": data(), "cond": torch.randint(0, 3, (64,))}, num_cond_classes=3)
    assert fmkit.Trainer(fmkit.TensorModel(Net()), ok, options=dict(OPTS, cond_dropout=0.2)).objective.null_class == 3


def test_an_adaptive_solver_for_categorical_data_is_refused_before_training():
    """It used to train to the end and then fail at the first evaluation, as an internal error."""
    from fmkit.errors import FmkitError

    ds = fmkit.TensorDataset({"x": data(), "c": torch.randint(0, 3, (64, 4))})
    with pytest.raises(FmkitError, match=r"adaptive solver 'dopri5' integrates continuous fields only.*\['c'\]"):
        fmkit.Trainer(nn.Linear(2, 2), ds, solver=fmkit.AdaptiveSolver("dopri5"), options=OPTS)


def test_options_as_a_dict_are_validated_and_a_wrong_type_or_device_is_named():
    tr = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options={"steps": 3, "device": "cpu"},
                       eval_options={"num_samples": 8})
    assert tr.opts.steps == 3 and tr.evaluator.options.num_samples == 8
    with pytest.raises(TypeError, match="options must be a TrainerOptions or a dict"):
        fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options=["steps", 3])
    with pytest.raises(TrainingError, match="'gpu' is not a device torch knows"):
        fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options={"device": "gpu"})


def test_fit_from_scratch_refuses_a_directory_with_checkpoints(tmp_path):
    """A second fit() without resume used to truncate metrics.csv and replace the first run's checkpoints."""
    run = tmp_path / "run"
    fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options=OPTS, run_dir=run).fit()
    metrics = (run / "metrics.csv").read_text()
    again = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options=dict(OPTS, steps=9),
                          run_dir=run)
    with pytest.raises(TrainingError, match="already holds checkpoints") as ei:
        again.fit()
    assert "fit(resume=True)" in ei.value.fix and (run / "metrics.csv").read_text() == metrics
    assert again.fit(resume=True).step == 9


def test_tensor_model_passes_cond_only_to_nets_that_take_it():
    seen = {}

    class Scaled(nn.Module):  # third parameter with a default: not a condition
        def forward(self, x, t, scale=1.0):
            seen["scale"] = scale
            return x * scale

    class Conditional(nn.Module):
        def forward(self, x, t, y):
            seen["y"] = y
            return x

    class OptionalLabels(nn.Module):  # a default of None: the usual optional condition
        def forward(self, x, t, labels=None):
            seen["labels"] = labels
            return x

    class KeywordOnly(nn.Module):
        def forward(self, x, t, *, cond=None):
            seen["kw"] = cond
            return x

    class Kwargs(nn.Module):
        def forward(self, x, t, **kw):
            seen["kwargs"] = kw
            return x

    x, t, c = {"x": torch.randn(4, 2)}, torch.rand(4), torch.arange(4)
    with pytest.warns(UserWarning, match="trains unconditionally"):
        fmkit.TensorModel(Scaled())(x, t, c)
    for net in (Conditional(), OptionalLabels(), KeywordOnly(), Kwargs()):
        fmkit.TensorModel(net)(x, t, c)
    assert seen["scale"] == 1.0 and torch.equal(seen["y"], c) and torch.equal(seen["labels"], c)
    assert torch.equal(seen["kw"], c) and torch.equal(seen["kwargs"]["cond"], c)
    out = fmkit.TensorModel(lambda x, t: 2 * x)(x, t)  # any callable, not only a module
    assert torch.equal(out["x"], 2 * x["x"])
    with pytest.raises(TypeError, match="wraps a network"):
        fmkit.TensorModel(3)


def test_metrics_module_is_reachable_after_import_fmkit():
    """docs/library.md passes `fmkit.metrics.W2Metric()` after a plain `import fmkit`."""
    code = "import fmkit; print(fmkit.metrics.W2Metric.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "W2Metric"


def test_a_library_fingerprint_is_checked_key_by_key_on_resume(tmp_path):
    """Any JSON-able fingerprint is stored in the checkpoint; a resume with another value is refused
    and the message names the key (the recipe's model/data/path/source use the same check)."""
    run = tmp_path / "run"
    fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options=OPTS, run_dir=run,
                  fingerprint={"net": {"width": 8}, "data": "v1"}).fit(until=3)
    other = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options=OPTS, run_dir=run,
                          fingerprint={"net": {"width": 9}, "data": "v1"})
    with pytest.raises(fmkit.errors.CheckpointError,
                       match=r"different net: net.width: 8 in the checkpoint, 9 in this trainer's fingerprint") as ei:
        other.fit(resume=True)
    assert "pass the fingerprint the run was started with" in ei.value.fix
    # flat keys, and a key only one side recorded, are named too
    for fp, msg in (({"net": {"width": 8}, "data": "v2"}, "different data: data: 'v1' in the checkpoint, 'v2'"),
                    ({"net": {"width": 8}}, "data: 'v1' in the checkpoint, absent in this trainer's fingerprint")):
        t = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options=OPTS, run_dir=run,
                          fingerprint=fp)
        with pytest.raises(fmkit.errors.CheckpointError, match=msg):
            t.fit(resume=True)
    same = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options=OPTS, run_dir=run,
                         fingerprint={"data": "v1", "net": {"width": 8}})
    assert same.fit(resume=True).step == 6


def test_a_model_without_room_for_cond_or_a_metric_returning_a_tensor_is_named():
    """Both used to surface as bare TypeError/ValueError from inside the trainer ("internal error")."""

    class NoCond(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x_t, t):
            return {"x": self.lin(x_t["x"])}

    with pytest.raises(ModelError, match=r"NoCond.forward\(x_t, t\) cannot be called as forward\(x_t, t, cond\)"):
        fmkit.Trainer(NoCond(), fmkit.TensorDataset(data()), options=OPTS)
    tr = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options=OPTS,
                       eval_options={"num_samples": 8}, metrics={"spread": lambda s, ds: {"std": s["x"].std(0)}})
    with pytest.raises(ContractError, match=r"metric 'spread' returned 'std' = Tensor \(2,\), not a number"):
        tr.evaluate()


def test_float64_data_with_a_float32_model_names_both_dtypes():
    tr = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data().double()), options=OPTS)
    with pytest.raises(ModelError, match=r"data of dtype \{'x': torch.float64\} with weights of dtype torch.float32"):
        tr.fit()


def test_a_source_or_coupling_of_the_wrong_shape_is_named_before_it_trains():
    """A [B,1] noise for [B,2] data broadcast in the path: every example got the same noise in both
    coordinates and training finished silently (an extension trial found it)."""
    from fmkit.errors import ContractError

    class Flat(fmkit.Source):
        def sample(self, like, mask=None):
            return torch.randn(like.shape[0], 1)

        def log_prob(self, x, mask=None):
            return torch.zeros(x.shape[0])

    class Half(fmkit.Coupling):
        def pair(self, x0, x1):
            return {k: v[: len(v) // 2] for k, v in x0.items()}, x1

    for kw, match in (({"source": Flat()}, r"the source Flat returned field 'x' of shape \(16, 1\); the data's"),
                      ({"coupling": Half()}, r"the coupling \(Half\), its x0 returned field 'x' of shape \(8, 2\)")):
        for pairing in ("step", "loader"):
            tr = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options=dict(OPTS, pairing=pairing),
                               **kw)
            with pytest.raises(ContractError, match=match):
                tr.fit()
            assert tr.step == 0


def test_a_callback_can_log_scalars_and_stop_training_early(tmp_path):
    """``trainer.log`` writes to metrics.csv; ``trainer.request_stop`` ends the fit after the step with a
    checkpoint and the final evaluation, and a resume continues to trainer.steps."""

    class EarlyStop(fmkit.Callback):
        def on_step_end(self, trainer, step):
            trainer.log({"custom": step * 2.0})
            if step == 4:
                trainer.request_stop("custom criterion met")

    run = tmp_path / "run"
    tr = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options=dict(OPTS, steps=20),
                       eval_options={"num_samples": 8}, metrics={"n": lambda s, ds: {"n": len(s["x"])}},
                       callbacks=[EarlyStop()], run_dir=run)
    tr.fit()
    assert tr.step == 4 and tr.stopped_early == "custom criterion met"
    logged = read_metrics(run)
    assert logged["custom"] == [(i, 2.0 * i) for i in range(1, 5)]
    assert logged["eval/n"] == [(4, 8.0)]  # evaluated once, at the stop
    assert ck.find_latest(run / "checkpoints").name == ck.step_dir_name(4)
    tr2 = fmkit.Trainer(fmkit.TensorModel(Net()), fmkit.TensorDataset(data()), options=dict(OPTS, steps=20), run_dir=run)
    assert tr2.fit(resume=True).step == 20 and tr2.stopped_early is None
