"""The time-series plugin keeps fmkit's contracts, its metric reads known spectra, and its recipe
trains a model whose samples have the frequencies asked for."""

import math

import fmkit_timeseries.plugin
import torch
from fmkit.testing import check_dataset, check_model, fresh_registry, read_metrics, run_cli
from fmkit_timeseries.data import SineWaves
from fmkit_timeseries.metrics import FrequencyMetric, dominant_frequency
from fmkit_timeseries.net import ConvNet1d


def test_dataset_keeps_the_contract():
    check_dataset(SineWaves(n=64))


def test_model_keeps_the_contract_and_is_shift_equivariant():
    ds = SineWaves(n=64)
    net = ConvNet1d.from_data(ds.info, channels=16, blocks=2)
    shift = lambda x: ({**x, "x": torch.roll(x["x"], 5, -1)}, lambda out: {"x": torch.roll(out["x"], 5, -1)})  # noqa: E731
    check_model(net, ds, equivariance=shift)  # circular convolutions commute with circular shifts


def test_dominant_frequency_of_known_series():
    s = torch.arange(64, dtype=torch.float64)
    x = torch.stack([torch.sin(2 * math.pi * f * s / 64 + 0.3) for f in (1, 5, 31)])[:, None]
    assert dominant_frequency(x).tolist() == [1, 5, 31]


def test_metric_on_the_data_itself_is_perfect():
    ds = SineWaves(n=256, noise=0.0)
    out = FrequencyMetric()(ds.reference(256), ds)
    assert out == {"freq_w1": 0.0, "freq_acc": 1.0, "freq_acc_data": 1.0}


def test_recipe_trains_a_model_with_the_frequencies_asked_for(tmp_path):
    reg = fresh_registry(fmkit_timeseries.plugin)
    r = run_cli("train", "sines", "--out", tmp_path / "run", "--set", "trainer.steps=300", "--set",
                "trainer.progress=false", "--set", "model.channels=16", "--set", "eval.num_samples=256", registry=reg)
    assert r.code == 0, r.out + r.err
    final = {name: values[-1][1] for name, values in read_metrics(tmp_path / "run").items()}
    assert final["eval/freq_acc_data"] == 1.0
    assert final["eval/freq_acc"] > 0.4, final  # chance is 1/8; the full recipe reaches more (README)
