"""Vocoders (log-mel -> waveform) as a component kind that any plugin can add.

The audio plugin declares the hook ``register_vocoders(register)`` (its ``register_hookspecs`` hook
hands fmkit :class:`VocoderSpecs`), and from then on fmkit's registry serves vocoders as it serves
its own kinds: lookup with the closest name, options validation, set-aside of a plugin that fails,
provenance, and rows in ``fmkit plugins --kind vocoders``. A third-party plugin adds one without
touching fmkit or this plugin::

    @hookimpl                                   # from fmkit.plugin
    def register_vocoders(register):
        register("hifigan", HiFiGAN, options=HiFiGANOptions, description="...")

``register(name, factory, options=None, description="")``; the factory is called with the validated
options plus ``front_end`` (a :class:`fmkit_audio.mel.FrontEndOptions`) when its signature asks, and
returns a callable ``vocoder(log_mel [B, M, T]) -> waveform [B, L]`` (un-normalised log-mel in, float out
at the level the mel says, full scale 1, unclamped: the writer sets the level, :mod:`fmkit_audio.levels`;
``L = (T - 1) * hop``). Recipes pick one by name: ``{name: wav, vocoder: hifigan}`` or
``vocoder: {name: hifigan, ...options}``. Griffin-Lim (Griffin & Lim 1984) through torchaudio's
InverseMelScale + GriffinLim is the built-in default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from fmkit.plugin import Registry, get_registry, hookspec
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fmkit_audio.mel import FrontEndOptions

KIND = "vocoders"


class VocoderSpecs:
    """The hook the audio plugin adds to fmkit's plugin manager: the ``vocoders`` kind."""

    @hookspec
    def register_vocoders(self, register):
        """Vocoders: ``register(name, factory, options=None, description="")``; the factory returns
        ``vocoder(log_mel [B, M, T]) -> waveform [B, L]``."""


def build_vocoder(spec: str | Mapping[str, Any], front_end: FrontEndOptions, *, where: str = "vocoder",
                  registry: Registry | None = None) -> Callable[[Tensor], Tensor]:
    """The vocoder ``spec`` names (``"griffin_lim"`` or ``{name: ..., **options}``), built for ``front_end``
    by ``registry`` (the process-wide one by default)."""
    return (registry or get_registry()).build(KIND, spec, where=where, front_end=front_end)


# ---------------------------------------------------------------------------------------------
class GriffinLimOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_iter: int = Field(64, ge=1, description="Griffin-Lim iterations")
    momentum: float = Field(0.99, ge=0.0, lt=1.0, description="fast Griffin-Lim momentum (Perraudin et al. 2013)")


class GriffinLim:
    """exp(log-mel) -> linear magnitude by torchaudio's InverseMelScale (least squares onto the Slaney
    filters, clamped at 0) -> phase by torchaudio's GriffinLim."""

    def __init__(self, n_iter: int = 64, momentum: float = 0.99, *, front_end: FrontEndOptions) -> None:
        import torchaudio

        fe = front_end
        self.front_end = fe
        self.inv = torchaudio.transforms.InverseMelScale(
            n_stft=fe.n_fft // 2 + 1, n_mels=fe.n_mels, sample_rate=fe.sample_rate, f_min=fe.f_min, f_max=fe.f_max,
            norm="slaney", mel_scale="slaney")
        self.gl = torchaudio.transforms.GriffinLim(n_fft=fe.n_fft, win_length=fe.win_length or fe.n_fft,
                                                   hop_length=fe.hop_length, power=1.0, n_iter=n_iter,
                                                   momentum=momentum, rand_init=False)

    @torch.no_grad()
    def __call__(self, log_mel: Tensor) -> Tensor:
        mag = self.inv(log_mel.float().exp()).clamp_min(0.0)
        length = (log_mel.shape[-1] - 1) * self.front_end.hop_length
        return self.gl(mag)[..., :length]

