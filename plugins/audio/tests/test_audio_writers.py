"""Writers: WAVs read back with the right rate and length (soundfile, the standard library's wave, and
torchaudio where it can decode), the spectrogram PNG, the safetensors samples."""

from __future__ import annotations

import json
import wave

import numpy as np
import pytest
import torch

from fmkit.plugin import RecipeError, RegistryError

from fmkit_audio.data import build_fsdd
from fmkit_audio.mel import MelStats
from fmkit_audio.writers import MelPngWriter, MelSafetensorsWriter, WavWriter


@pytest.fixture(scope="module")
def dataset(synth_fsdd):
    return build_fsdd(root=str(synth_fsdd), limit=30)


@pytest.fixture(scope="module")
def samples(dataset):
    s = dataset.template(6, seed=3)  # real training mels stand in for generated ones
    assert len(set(s["mask"].sum(dim=(1, 2)).tolist())) > 1, "want clips of different lengths"
    return s


def expected_lengths(samples, hop: int) -> list[int]:
    return [(int(n) - 1) * hop for n in samples["mask"].sum(dim=(1, 2))]


def torchaudio_reader():
    """torchaudio 2.9+ decodes only through TorchCodec (torchaudio.load = load_with_torchcodec), which needs
    the torchcodec package and FFmpeg's shared libraries: None (with the reason) where that is missing."""
    import torchaudio

    try:
        import torchcodec  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or OSError when FFmpeg's libraries are missing
        return None, f"torchaudio {torchaudio.__version__} reads files only through torchcodec: {exc!s:.120}"
    return torchaudio.load, ""


def test_wavs_read_back_with_rate_and_length(dataset, samples, tmp_path):
    w = WavWriter(vocoder="griffin_lim", num=5, data_info=dataset.info)
    paths = w(samples, tmp_path, dataset, step=12)
    wavs = [p for p in paths if p.suffix == ".wav"]
    assert len(wavs) == 5
    stats = json.loads((tmp_path / "mel_stats.json").read_text())
    assert stats["front_end"]["sample_rate"] == 8000 and stats["std"] > 0
    # data.stats may point at this file: it loads as the statistics the run normalised with
    loaded = MelStats.load(tmp_path / "mel_stats.json")
    assert (loaded.mean, loaded.std) == (dataset.info.meta["mel_mean"], dataset.info.meta["mel_std"])
    assert loaded.frames == dataset.info.meta["mel_frames"] > 0
    import soundfile as sf

    lengths = expected_lengths(samples, 128)[:5]
    labels = [str(int(c)) for c in samples["cond"][:5]]
    for p, n, lab in zip(wavs, lengths, labels):
        assert p.name.startswith("step0000012_") and p.stem.endswith(f"_{lab}")
        info = sf.info(str(p))
        assert (info.samplerate, info.frames, info.channels, info.subtype) == (8000, n, 1, "PCM_16")
        data, sr = sf.read(str(p), dtype="float32")
        assert sr == 8000 and data.shape == (n,) and 0.01 < np.abs(data).max() <= 1.0
        with wave.open(str(p)) as f:  # an independent reader of the RIFF header
            assert (f.getframerate(), f.getnframes(), f.getnchannels(), f.getsampwidth()) == (8000, n, 1, 2)
    assert w.audio_seconds == pytest.approx(sum(lengths) / 8000) and w.vocoder_seconds > 0


def test_wavs_read_back_by_torchaudio(dataset, samples, tmp_path):
    load, why = torchaudio_reader()
    if load is None:
        pytest.skip(why)
    paths = [p for p in WavWriter(num=3, data_info=dataset.info)(samples, tmp_path, dataset, 0) if p.suffix == ".wav"]
    import soundfile as sf

    for p, n in zip(paths, expected_lengths(samples, 128)):
        x, sr = load(str(p))
        assert sr == 8000 and tuple(x.shape) == (1, n)
        torch.testing.assert_close(x[0], torch.from_numpy(sf.read(str(p), dtype="float32")[0]), atol=1e-4, rtol=0)


def test_torchaudio_front_end_agrees_with_the_file_read_back(dataset, samples, tmp_path):
    """What torchaudio does without torchcodec: its MelSpectrogram (the front end) on the WAV read back
    gives the log-mel of the same waveform held in memory at the writer's level (16-bit quantisation aside)."""
    from fmkit_audio.levels import at_level, data_peak
    from fmkit_audio.mel import FrontEndOptions, MelFrontEnd
    from fmkit_audio.vocoders import build_vocoder

    import soundfile as sf

    fe = FrontEndOptions(**dataset.info.meta["front_end"])
    p = [q for q in WavWriter(num=1, data_info=dataset.info)(samples, tmp_path, dataset, 0) if q.suffix == ".wav"][0]
    n = int(samples["mask"][0].sum())
    mel = samples["mel"][0, :, :n] * dataset.stats.std + dataset.stats.mean
    wav, _ = at_level(build_vocoder("griffin_lim", fe)(mel[None])[0], data_peak(dataset.info.meta))
    back = torch.from_numpy(sf.read(str(p), dtype="float32")[0])
    front = MelFrontEnd(fe)
    loud = front(wav) > front(wav).max() - 5
    assert (front(back) - front(wav)).abs()[loud].max() < 0.05


def test_unknown_vocoder_fails_when_the_writer_is_built(dataset):
    with pytest.raises(RegistryError) as e:
        WavWriter(vocoder="grifin_lim", data_info=dataset.info)
    assert "griffin_lim" in e.value.fix and e.value.where == "eval.writers.wav.vocoder.name"
    with pytest.raises(RecipeError, match="n_iter"):
        WavWriter(vocoder={"name": "griffin_lim", "n_iter": 0}, data_info=dataset.info)


def test_png_and_safetensors(dataset, samples, tmp_path):
    from safetensors import safe_open

    (png,) = MelPngWriter(num=4)(samples, tmp_path, dataset, 7)
    assert png.name == "mels_step0000007.png" and png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 5000
    (st,) = MelSafetensorsWriter()(samples, tmp_path, dataset, 7)
    with safe_open(str(st), "pt") as f:
        meta = f.metadata()
        log_mel, mask, cond = f.get_tensor("log_mel"), f.get_tensor("mask"), f.get_tensor("cond")
    assert json.loads(meta["front_end"])["n_mels"] == 64
    torch.testing.assert_close(log_mel, samples["mel"] * float(meta["mel_std"]) + float(meta["mel_mean"]))
    assert torch.equal(mask, samples["mask"]) and torch.equal(cond, samples["cond"])
