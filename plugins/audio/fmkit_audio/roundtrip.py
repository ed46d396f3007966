"""What the digit metric listens to: each log-mel through the recipe's vocoder to a waveform at the data's
level (as the WAV writer writes it, :mod:`fmkit_audio.levels`), analysed again by the data's front end and
normalised by its statistics. The classifier then judges the sound a user hears, not the mel before the
vocoder. The real test clips take the same mel -> vocoder -> mel round trip for the ceiling; their
classifier outputs are computed once per classifier, vocoder and level, and cached beside the classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from fmkit.plugin import State
from torch import Tensor

from fmkit_audio.classifier import TrainedClassifier
from fmkit_audio.levels import at_level, data_peak
from fmkit_audio.mel import FrontEndOptions, MelFrontEnd, settings_key
from fmkit_audio.writers import denormalised

VERSION = 1


@torch.no_grad()
def heard(samples: State, dataset, vocoder: Callable[[Tensor], Tensor]) -> State:
    """``samples`` (normalised log-mels ``mel`` [B, M, T] with ``mask`` [B, 1, T]) after mel -> ``vocoder`` ->
    waveform at the data's peak level -> mel: ``{"mel", "mask"}`` of the same shapes, normalised again.
    A clip of ``T_i`` frames becomes ``(T_i - 1) * hop`` samples, which the centred front end turns into
    ``T_i`` frames again; a vocoder that returns fewer samples loses the frames it did not cover (masked)."""
    meta = dataset.info.meta
    front = MelFrontEnd(FrontEndOptions(**meta["front_end"]))
    peak = data_peak(meta)
    mel = torch.zeros(samples["mel"].shape, dtype=torch.float32)
    mask = samples["mask"].clone()
    for i, log_mel in enumerate(denormalised(samples, dataset)):
        wav, _ = at_level(vocoder(log_mel[None])[0].float().cpu(), peak)
        back = (front(wav) - meta["mel_mean"]) / meta["mel_std"]
        n = min(back.shape[-1], log_mel.shape[-1])
        mel[i, :, :n] = back[:, :n]
        mask[i, :, n:] = False
    return {"mel": mel, "mask": mask}


def ceiling_outputs(clf: TrainedClassifier, dataset, vocoder: Callable[[Tensor], Tensor], vocoder_spec: Any,
                    cache: Path | None = None) -> tuple[Tensor, Tensor]:
    """The real test clips as the metric hears them: their round trip through ``vocoder``, classified; computed
    once and cached (``ceiling-<key>.safetensors``).

    Args:
        clf: the metric's classifier (its cache file's name enters the key: data, front end, settings).
        dataset: a MelDataset; its reference (held-out test) split is what is scored.
        vocoder: the callable ``log_mel [B, M, T] -> waveform [B, L]``.
        vocoder_spec: what names the vocoder (name and options) in the cache key.
        cache: the cache folder; None: the plugin's (``$FMKIT_CACHE_DIR/audio``).

    Returns:
        The classifier's logits [N, K] and penultimate features [N, D] of the N test clips.
    """
    from safetensors.torch import load_file, save_file

    from fmkit_audio.data import cache_dir

    key = settings_key("roundtrip", VERSION, clf.path.name, vocoder_spec, data_peak(dataset.info.meta))
    path = (cache or cache_dir()) / f"ceiling-{key}.safetensors"
    if path.is_file():
        t = load_file(str(path))
        return t["logits"], t["features"]
    logits, feats = clf.run(heard(dataset.split_state("reference"), dataset, vocoder))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"logits": logits.contiguous(), "features": feats.contiguous()}, str(tmp))
        tmp.replace(path)
    except OSError:  # a read-only cache: computed again next time, nothing is lost
        pass
    return logits, feats
