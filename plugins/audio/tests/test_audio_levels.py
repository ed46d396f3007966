"""WAVs at a sane level: each is peak-normalised to the training clips' typical peak (the dataset's
``peak_level``), never clamped, so no written sample reaches full scale; how far the vocoder's output went
beyond full scale is counted in the writer's report (``levels_step*.json``) and said in a note."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from fmkit_audio.data import build_fsdd
from fmkit_audio.levels import DEFAULT_PEAK, Level, at_level, level_report, over_full_scale_message, typical_peak
from fmkit_audio.writers import WavWriter

VOCODER = {"name": "griffin_lim", "n_iter": 8}


@pytest.fixture(scope="module")
def dataset(synth_fsdd):
    return build_fsdd(root=str(synth_fsdd), limit=30)


def louder(samples, dataset, nats: float):
    """``samples`` with every log-mel raised by ``nats`` (amplitude times e^nats)."""
    return {**samples, "mel": samples["mel"] + nats / dataset.stats.std}


def test_loud_samples_are_turned_down_not_clipped_and_the_clipping_is_counted(dataset, tmp_path, capsys):
    samples = louder(dataset.template(4, seed=3), dataset, 4.0)  # ~55 times the data's amplitude
    w = WavWriter(vocoder=VOCODER, num=4, data_info=dataset.info)
    wavs = [p for p in w(samples, tmp_path, dataset, step=5) if p.suffix == ".wav"]
    for p in wavs:
        pcm, _ = sf.read(str(p), dtype="int16")
        assert np.abs(pcm.astype(np.int32)).max() < 32767  # no sample at (or beyond) full scale
        assert np.abs(sf.read(str(p), dtype="float32")[0]).max() == pytest.approx(0.95, abs=2e-3)
    report = json.loads((tmp_path / "levels_step0000005.json").read_text())
    assert report == w.report and report["target_peak"] == pytest.approx(0.95)
    assert report["files_over_full_scale"] == 4 and report["samples_over_full_scale"] > 100
    assert report["max_peak_in"] > 5 and set(report["files"]) == {p.name for p in wavs}
    err = capsys.readouterr().err
    assert "went beyond full scale" in err and f"{report['samples_over_full_scale']:,}" in err


def test_quiet_samples_put_nothing_beyond_full_scale_and_say_nothing(dataset, tmp_path, capsys):
    w = WavWriter(vocoder=VOCODER, num=3, data_info=dataset.info)
    w(louder(dataset.template(3, seed=3), dataset, -1.0), tmp_path, dataset, step=0)
    assert w.report["samples_over_full_scale"] == 0 and w.report["files_over_full_scale"] == 0
    assert all(f["gain"] > 1 for f in w.report["files"].values())  # turned up to the data's level
    assert "full scale" not in capsys.readouterr().err


def test_the_level_is_the_training_clips_typical_peak(synth_fsdd, tmp_path):
    assert build_fsdd(root=str(synth_fsdd), limit=30).info.meta["peak_level"] == pytest.approx(0.95)  # normalised
    raw = build_fsdd(root=str(synth_fsdd), limit=30, peak_normalise=False)
    peak = raw.info.meta["peak_level"]
    assert 0.4 < peak < 0.6  # the generated clips' own level (0.5 plus a little noise), not 0.95
    w = WavWriter(vocoder=VOCODER, num=2, data_info=raw.info)
    wavs = [p for p in w(raw.template(2, seed=1), tmp_path, raw, 0) if p.suffix == ".wav"]
    assert np.abs(sf.read(str(wavs[0]), dtype="float32")[0]).max() == pytest.approx(peak, abs=2e-3)
    assert json.loads((tmp_path / "mel_stats.json").read_text())["peak_level"] == pytest.approx(peak)
    (tmp_path / "own").mkdir()
    w2 = WavWriter(vocoder=VOCODER, num=1, peak=0.5, data_info=raw.info)  # the writer's own level wins
    w2(raw.template(1, seed=1), tmp_path / "own", raw, 0)
    assert w2.report["target_peak"] == 0.5


def test_at_level_scales_to_the_peak_and_leaves_silence_alone():
    wav = torch.tensor([0.0, 2.0, -4.0, 1.0])
    out, lv = at_level(wav, 0.8)
    assert out.abs().max() == pytest.approx(0.8) and lv.gain == pytest.approx(0.2)
    assert (lv.peak_in, lv.over_full_scale, lv.samples) == (4.0, 2, 4)
    silent, lv0 = at_level(torch.zeros(5), 0.8)
    assert torch.equal(silent, torch.zeros(5)) and lv0.gain == 1.0
    assert typical_peak([0.3, 0.5, 0.9]) == 0.5 and typical_peak([]) == DEFAULT_PEAK


def test_a_few_samples_beyond_full_scale_are_counted_and_many_are_also_noted():
    """Griffin-Lim lets a clip at the data's level overshoot by a few samples: counted, but a note only
    for more than 0.1% of the samples."""
    few = level_report(["a.wav"], [Level(1.02, 0.93, 50, 100_000, 0.1)], 0.95)
    many = level_report(["a.wav"], [Level(3.0, 0.32, 20_000, 100_000, 0.1)], 0.95)
    assert few["samples_over_full_scale"] == 50 and over_full_scale_message(few) is None
    assert over_full_scale_message(many).startswith("the vocoder's output of 1 of 1 WAV(s) went beyond full scale")
