"""Per-digit sampling in the audio plugin: the WAV writer writes every sample it is given (``fmkit sample -n N``
writes N), named in sample order with the digit; templates of chosen digits take the lengths of that digit's
training clips (``fmkit sample --class / --per-class``)."""

from __future__ import annotations

import pytest
import torch

from fmkit_audio.data import build_fsdd
from fmkit_audio.writers import WavWriter


@pytest.fixture(scope="module")
def dataset(synth_fsdd):
    return build_fsdd(root=str(synth_fsdd), limit=30)


def test_wav_writer_writes_every_sample_named_by_digit(dataset, tmp_path):
    cond = torch.arange(3).repeat_interleave(4)  # --per-class 4 of digits 0..2: 12 samples in class order
    samples = dataset.class_template(cond, seed=1)  # real training mels stand in for generated ones
    paths = WavWriter(vocoder={"name": "griffin_lim", "n_iter": 4}, data_info=dataset.info)(samples, tmp_path,
                                                                                             dataset, step=3)
    wavs = [p for p in paths if p.suffix == ".wav"]
    assert len(wavs) == 12 and sorted(wavs) == wavs  # all of them, and a listing sorts them in sample order
    names = dataset.info.meta["class_names"]
    assert [p.stem.split("_")[-1] for p in wavs] == [names[c] for c in cond.tolist()]
    assert wavs[0].name == f"step0000003_000_{names[0]}.wav"
    few = WavWriter(vocoder={"name": "griffin_lim", "n_iter": 4}, num=2, data_info=dataset.info)
    (tmp_path / "few").mkdir()
    assert len([p for p in few(samples, tmp_path / "few", dataset, 4) if p.suffix == ".wav"]) == 2  # num: at most


def test_class_templates_take_lengths_of_their_digit(dataset):
    cond = torch.tensor([7, 1, 1, 9, 0, 7])
    t = dataset.class_template(cond, seed=5)
    assert torch.equal(t["cond"], cond) and t["mel"].shape[-1] == dataset.max_frames
    for frames, c in zip(t["mask"].sum(dim=(1, 2)).tolist(), cond.tolist()):
        assert frames in set(dataset.lengths[(dataset.labels == c).numpy()].tolist()), (c, frames)
    assert torch.equal(t["mask"], dataset.class_template(cond, seed=5)["mask"])  # deterministic in the seed
