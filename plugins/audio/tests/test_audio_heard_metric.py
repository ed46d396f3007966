"""The digit metric scores what a user hears: the samples through the recipe's vocoder, at the WAV writer's
level, analysed again into mels (``digit_acc_vocoded``, the table's first row), with the mel before the
vocoder as the second row and the real test clips' accuracy after the same round trip as the ceiling.

A deliberately broken vocoder (white noise of the right length) drives the vocoded accuracy to chance
while the mel accuracy stays high: the metric tells them apart, which the mel-only metric could not."""

from __future__ import annotations

import pytest
import torch

from fmkit.plugin import hookimpl
from fmkit.testing import fresh_registry

import fmkit_audio.plugin as audio_plugin
import fmkit_audio.roundtrip as roundtrip
from fmkit_audio.classifier import train_classifier
from fmkit_audio.data import build_fsdd
from fmkit_audio.metrics import AudioDigitsMetric

GRIFFIN_LIM = {"name": "griffin_lim", "n_iter": 32, "momentum": 0.99}


class Noise:
    """A broken vocoder: white noise of the length a vocoder returns, whatever the mel says."""

    def __init__(self, *, front_end) -> None:
        self.hop = front_end.hop_length

    def __call__(self, log_mel):
        b, _, t = log_mel.shape
        return 0.1 * torch.randn(b, (t - 1) * self.hop, generator=torch.Generator().manual_seed(t))


class NoisePlugin:
    @hookimpl
    def register_vocoders(self, register):
        register("noise", Noise, description="white noise (a broken vocoder, for the test)")


@pytest.fixture(scope="module")
def dataset(synth_fsdd):
    return build_fsdd(root=str(synth_fsdd))  # the generated digits: 100 train, 100 test clips


@pytest.fixture(scope="module")
def classifier(dataset, tmp_path_factory):
    """A small classifier trained here on the generated digits, whose mels are easily told apart."""
    return train_classifier(dataset, epochs=15, batch_size=16, seed=0, cache=tmp_path_factory.mktemp("clf"),
                            log=lambda *_: None)


@pytest.fixture(scope="module")
def registry():
    return fresh_registry(audio_plugin, NoisePlugin())


def test_a_broken_vocoder_drives_the_vocoded_accuracy_to_chance_while_the_mel_accuracy_stays_high(
        dataset, classifier, registry):
    samples = dataset.template(60, seed=1)  # real training mels stand in for a model's samples
    good = AudioDigitsMetric(vocoder=GRIFFIN_LIM, registry=registry, classifier=classifier)(samples, dataset)
    bad = AudioDigitsMetric(vocoder="noise", registry=registry, classifier=classifier)(samples, dataset)
    assert list(good)[:2] == ["digit_acc_vocoded", "digit_acc_mel"]  # the table leads with what is heard
    assert good["digit_acc_mel"] == bad["digit_acc_mel"] >= 0.9  # the mels are the same, and recognised
    assert good["digit_acc_vocoded"] >= 0.8  # through Griffin-Lim the digits are still heard
    assert bad["digit_acc_vocoded"] <= 0.25  # through noise: chance (0.1), whatever the mels were
    assert bad["digit_acc_ceiling"] <= 0.25 < 0.8 <= good["digit_acc_ceiling"]  # the real clips say the same
    assert good["digit_acc_ceiling_mel"] == pytest.approx(classifier.test_accuracy)
    # measured: FD 320 vs 18 (floor 320 vs 115: the generated test takes differ from the training ones), IS 1.0
    assert bad["fd_vocoded"] > 5 * good["fd_vocoded"] and bad["fd_floor"] > 2 * good["fd_floor"]
    assert bad["is_vocoded"] < 1.5 < good["is_vocoded"]  # noise is heard as one digit, whatever was asked
    assert bad["fd_mel"] == pytest.approx(good["fd_mel"])


def test_the_ceiling_is_computed_once_and_cached(dataset, classifier, registry, monkeypatch, tmp_path):
    monkeypatch.setenv("FMKIT_CACHE_DIR", str(tmp_path))
    samples = dataset.template(10, seed=2)
    first = AudioDigitsMetric(vocoder=GRIFFIN_LIM, registry=registry, classifier=classifier)(samples, dataset)
    assert len(list((tmp_path / "audio").glob("ceiling-*.safetensors"))) == 1
    calls = []
    real = roundtrip.heard
    monkeypatch.setattr(roundtrip, "heard", lambda s, *a: calls.append(s["mel"].shape[0]) or real(s, *a))
    again = AudioDigitsMetric(vocoder=GRIFFIN_LIM, registry=registry, classifier=classifier)(samples, dataset)
    assert calls == [10]  # the samples only: the 100 test clips' round trip came from the cache
    assert again == pytest.approx(first)


def test_without_a_vocoder_the_mel_rows_alone(dataset, classifier):
    out = AudioDigitsMetric(vocoder=None, classifier=classifier)(dataset.template(10, seed=3), dataset)
    assert list(out)[0] == "digit_acc_mel" and not any("vocoded" in k for k in out)
    assert "digit_acc_ceiling" not in out and "digit_acc_ceiling_mel" in out and "fd_floor_mel" in out
