"""Vocoders (log-mel -> waveform) as a component kind that any plugin can add.

The audio plugin declares the hook ``register_vocoders(register)`` on the registry's plugin manager
with pluggy's ``add_hookspecs`` (the core knows nothing of vocoders). A third-party plugin adds one
without touching fmkit or this plugin::

    @hookimpl                                   # from fmkit.plugin
    def register_vocoders(register):
        register("hifigan", HiFiGAN, options=HiFiGANOptions, description="...")

``register(name, factory, options=None, description="")``; the factory is called with the validated
options plus ``front_end`` (a :class:`fmkit_audio.mel.FrontEndOptions`) when its signature asks, and
returns a callable ``vocoder(log_mel [B, M, T]) -> waveform [B, L]`` (un-normalised log-mel, float in
[-1, 1] out, ``L = (T - 1) * hop``). Recipes pick one by name: ``{name: wav, vocoder: hifigan}`` or
``vocoder: {name: hifigan, ...options}``. Griffin-Lim (Griffin & Lim 1984) through torchaudio's
InverseMelScale + GriffinLim is the built-in default.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import fmkit
import torch
from fmkit.plugin import RecipeError, RegistryError, hookspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from fmkit_audio.mel import FrontEndOptions

HOOK = "register_vocoders"


class VocoderSpecs:
    """The hook the audio plugin adds to fmkit's plugin manager."""

    @hookspec
    def register_vocoders(self, register):
        """Vocoders: ``register(name, factory, options=None, description="")``; the factory returns
        ``vocoder(log_mel [B, M, T]) -> waveform [B, L]``."""


@dataclass(frozen=True)
class VocoderEntry:
    name: str
    factory: Callable[..., Any]
    options: type[BaseModel] | None
    plugin: str
    description: str


def ensure_hookspec(registry: fmkit.Registry) -> None:
    """Declare ``register_vocoders`` on ``registry``'s plugin manager (once); pluggy then checks the
    implementations that plugins registered before it."""
    caller = getattr(registry.pm.hook, HOOK, None)
    if caller is None or caller.spec is None:
        registry.pm.add_hookspecs(VocoderSpecs)


def vocoders(registry: fmkit.Registry | None = None) -> dict[str, VocoderEntry]:
    """Every registered vocoder by name (the process-wide registry by default)."""
    reg = registry or fmkit.get_registry()
    reg.plugins()  # loads the entry points
    ensure_hookspec(reg)
    found: dict[str, VocoderEntry] = {}
    for impl in reversed(getattr(reg.pm.hook, HOOK).get_hookimpls()):
        def register(name: str, factory: Callable[..., Any], options: type[BaseModel] | None = None,
                     description: str = "", _plugin: str = impl.plugin_name) -> None:
            if name in found:
                raise RegistryError(f"vocoder {name!r} is registered twice: by plugin {found[name].plugin!r} and by "
                                    f"plugin {_plugin!r}", fix="rename one, or disable a plugin with "
                                    "FMKIT_DISABLE_PLUGINS")
            found[name] = VocoderEntry(name, factory, options, _plugin,
                                       description or (inspect.getdoc(factory) or "").split("\n")[0])
        impl.function(register=register)
    return found


def build_vocoder(spec: str | Mapping[str, Any], front_end: FrontEndOptions, *, where: str = "vocoder",
                  registry: fmkit.Registry | None = None) -> Callable[[Tensor], Tensor]:
    """The vocoder ``spec`` names (``"griffin_lim"`` or ``{name: ..., **options}``), built for ``front_end``."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name", None)
    table = vocoders(registry)
    if name not in table:
        close = difflib.get_close_matches(str(name), sorted(table), n=1, cutoff=0.5)
        raise RecipeError(f"unknown vocoder {name!r}", where=f"{where}.name" if isinstance(name, str) else where,
                          fix=("did you mean " + repr(close[0]) + "? " if close else "")
                          + f"available vocoders: {', '.join(sorted(table)) or '(none)'}; a plugin adds one with "
                            "the register_vocoders hook")
    e = table[name]
    if e.options is None:
        if spec:
            raise RecipeError(f"vocoder {name!r} takes no options, got {sorted(spec)}", where=where, fix="remove them")
        kwargs: dict[str, Any] = {}
    else:
        try:
            opts = e.options.model_validate(spec)
        except ValidationError as exc:
            lines = "; ".join(f"{'.'.join(map(str, er['loc']))}: {er['msg']}" for er in exc.errors())
            raise RecipeError(f"invalid options for vocoder {name!r}: {lines}", where=where,
                              fix=f"its options: {', '.join(e.options.model_fields)}") from None
        kwargs = {k: getattr(opts, k) for k in type(opts).model_fields}
    params = inspect.signature(e.factory).parameters
    if "front_end" in params:
        kwargs["front_end"] = front_end
    return e.factory(**kwargs)


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
        return self.gl(mag)[..., :length].clamp(-1.0, 1.0)

