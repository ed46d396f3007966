"""Real-time factor (RTF) of sampling: seconds of audio produced per second of compute.

RTF > 1 means faster than real time (some papers' tables, e.g. WaveGlow's and Grad-TTS's, report the
inverse, compute / audio). The flow (``nfe`` network evaluations per sample, CFG doubling
them) and the vocoder (Griffin-Lim) are timed apart, since a learned vocoder plugin would replace the
second and not the first; ``total`` is their combination, audio / (flow + vocoder seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class RealTimeFactor:
    """Audio seconds and compute seconds of one measurement, and the three factors."""

    audio_seconds: float
    flow_seconds: float
    vocoder_seconds: float
    samples: int
    nfe: int

    @property
    def flow(self) -> float:
        return real_time_factor(self.audio_seconds, self.flow_seconds)

    @property
    def vocoder(self) -> float:
        return real_time_factor(self.audio_seconds, self.vocoder_seconds)

    @property
    def total(self) -> float:
        return real_time_factor(self.audio_seconds, self.flow_seconds + self.vocoder_seconds)

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "rtf_flow": self.flow, "rtf_vocoder": self.vocoder, "rtf_total": self.total}


def real_time_factor(audio_seconds: float, compute_seconds: float) -> float:
    """Seconds of audio per second of compute (``inf`` for zero compute time)."""
    return float(audio_seconds) / compute_seconds if compute_seconds > 0 else float("inf")


def audio_seconds(mask: Tensor, hop_length: int, sample_rate: int) -> float:
    """Seconds of audio that the real frames of ``mask`` [B, 1, T] become: ``(T_i - 1) * hop`` samples each
    (what the vocoders return for ``T_i`` centred frames)."""
    frames = mask.reshape(mask.shape[0], -1).sum(1).clamp_min(1)
    return float(((frames - 1) * hop_length).sum()) / sample_rate


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it (a no-op on the CPU)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def time_vocoder(vocoder: Callable[[Tensor], Tensor], mels: Sequence[Tensor]) -> tuple[list[Tensor], float]:
    """Vocode each un-normalised log-mel ``[M, T_i]`` alone (as a writer does); returns the waveforms and
    the seconds spent."""
    out = []
    t0 = time.perf_counter()
    for m in mels:
        out.append(vocoder(m[None])[0])
    synchronize(mels[0].device if len(mels) else None)
    return out, time.perf_counter() - t0
