"""Log-mel front end and normalisation statistics.

The front end follows Matcha-TTS / HiFi-GAN (Mehta et al. 2024, arXiv:2309.03199): magnitude STFT
(power 1), Slaney mel filters, ``log(clamp(mel, 1e-5))``, then one global mean/std so the flow works
on roughly unit-variance data. Shapes: waveform ``[L]`` or ``[B, L]`` (float in [-1, 1]) -> mel
``[M, T]`` or ``[B, M, T]`` with ``T = L // hop + 1`` (centred frames).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor


class FrontEndOptions(BaseModel):
    """The mel settings a recipe gives (``data.mel``)."""

    model_config = ConfigDict(extra="forbid")
    sample_rate: int = Field(8000, ge=1000, description="Hz; audio is resampled to it")
    n_fft: int = Field(512, ge=16)
    win_length: int | None = Field(None, ge=16, description="null = n_fft")
    hop_length: int = Field(128, ge=1)
    n_mels: int = Field(64, ge=4)
    f_min: float = Field(0.0, ge=0.0)
    f_max: float | None = Field(None, gt=0.0, description="null = sample_rate / 2")
    log_clamp: float = Field(1e-5, gt=0.0)

    @model_validator(mode="after")
    def _check(self) -> FrontEndOptions:
        fmax = self.f_max if self.f_max is not None else self.sample_rate / 2
        if fmax > self.sample_rate / 2 + 1e-6 or fmax <= self.f_min:
            raise ValueError(f"need f_min < f_max <= sample_rate/2 = {self.sample_rate / 2}, got "
                             f"f_min={self.f_min}, f_max={fmax}")
        if (self.win_length or self.n_fft) > self.n_fft:
            raise ValueError("win_length must not exceed n_fft")
        return self


class MelFrontEnd(torch.nn.Module):
    """waveform -> log-mel (un-normalised) with torchaudio's MelSpectrogram."""

    def __init__(self, opts: FrontEndOptions) -> None:
        super().__init__()
        import torchaudio

        self.opts = opts
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=opts.sample_rate, n_fft=opts.n_fft, win_length=opts.win_length or opts.n_fft,
            hop_length=opts.hop_length, f_min=opts.f_min, f_max=opts.f_max, n_mels=opts.n_mels, power=1.0,
            norm="slaney", mel_scale="slaney", center=True, pad_mode="reflect")

    def forward(self, wav: Tensor) -> Tensor:
        return torch.log(self.mel(wav.to(torch.float32)).clamp_min(self.opts.log_clamp))

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.opts.hop_length + 1

    def seconds(self, frames: Tensor | int) -> Tensor | float:
        """Audio duration of ``frames`` mel frames, in seconds."""
        return frames * self.opts.hop_length / self.opts.sample_rate


@dataclass(frozen=True)
class MelStats:
    """Global mean/std of the log-mel over every real frame of the training split (Matcha-TTS)."""

    mean: float
    std: float
    frames: int

    @classmethod
    def compute(cls, mels: list[Tensor]) -> MelStats:
        """From a list of ``[M, T_i]`` log-mels (float64 sums: 10^6 values lose nothing)."""
        n = sum(m.numel() for m in mels)
        s = sum(m.double().sum() for m in mels)
        s2 = sum((m.double() ** 2).sum() for m in mels)
        mean = float(s / n)
        std = float((s2 / n - mean**2).clamp_min(1e-12).sqrt())
        return cls(mean, std, sum(int(m.shape[-1]) for m in mels))

    def normalise(self, mel: Tensor) -> Tensor:
        return (mel - self.mean) / self.std

    def denormalise(self, mel: Tensor) -> Tensor:
        return mel * self.std + self.mean

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: Path) -> MelStats:
        """Reads what :meth:`save` or the WAV writer's ``mel_stats.json`` holds (``frames`` is informative:
        files written before it was recorded load with 0)."""
        d = json.loads(Path(path).read_text())
        return cls(float(d["mean"]), float(d["std"]), int(d.get("frames", 0)))


def settings_key(*parts: object) -> str:
    """A short stable hash of settings (cache file names)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]
