"""fmkit hook implementations of the audio plugin (heavy imports happen inside the hooks).

Besides the core's kinds, the plugin declares one of its own, ``vocoders`` (mel -> waveform), in its
``register_hookspecs`` hook: any plugin may implement ``register_vocoders(register)``, fmkit's
registry serves the kind as its own, and recipes select one by name (``eval.writers: [{name: wav,
vocoder: griffin_lim}]``). See :mod:`fmkit_audio.vocoders`.
"""

from __future__ import annotations

from pathlib import Path

from fmkit.plugin import hookimpl, register_recipe_folder

_HERE = Path(__file__).parent


@hookimpl
def register_datasets(register):
    from fmkit_audio.data import (
        FolderOptions,
        FSDDOptions,
        SpeechCommandsOptions,
        build_folder,
        build_fsdd,
        build_speechcommands,
    )

    register("fsdd", build_fsdd, options=FSDDOptions,
             description="Free Spoken Digit Dataset as log-mels (8 kHz; official split 0-4 test, 5-49 train)")
    register("audio_folder", build_folder, options=FolderOptions,
             description="any folder of WAV/FLAC files as log-mels, labels from an optional CSV")
    register("speechcommands", build_speechcommands, options=SpeechCommandsOptions,
             description="Speech Commands via torchaudio's class as log-mels (digits_only: SC09)")


@hookimpl
def register_models(register):
    from fmkit_audio.model import MelUNet, MelUNetOptions

    register("mel_unet", MelUNet, options=MelUNetOptions,
             description="Matcha-TTS-style 1-D U-Net over mel frames (res conv + transformer blocks), class-conditioned")


@hookimpl
def register_recipes(register):
    register_recipe_folder(register, _HERE / "recipes")


@hookimpl
def register_hookspecs(register):
    """Declare the ``register_vocoders`` hook, so other plugins' vocoders are known before fmkit checks hooks."""
    from fmkit_audio.vocoders import VocoderSpecs

    register(VocoderSpecs)


@hookimpl
def register_vocoders(register):
    """The audio plugin's own kind (declared in :mod:`fmkit_audio.vocoders` with ``add_hookspecs``)."""
    from fmkit_audio.vocoders import GriffinLim, GriffinLimOptions

    register("griffin_lim", GriffinLim, options=GriffinLimOptions,
             description="Griffin-Lim phase reconstruction via torchaudio InverseMelScale + GriffinLim (built in)")


@hookimpl
def register_metrics(register):
    from fmkit_audio.metrics import AudioDigitsMetric, AudioDigitsOptions

    register("audio_digits", AudioDigitsMetric, options=AudioDigitsOptions,
             description="digit accuracy of the vocoded samples (and their mels), Fréchet distance, inception "
                         "score, mel stats; the real test clips' round trip as ceiling")


@hookimpl
def register_writers(register):
    from fmkit_audio.writers import MelPngWriter, MelSafetensorsWriter, PngOptions, WavOptions, WavWriter

    register("wav", WavWriter, options=WavOptions, description="WAV files through a selectable vocoder (soundfile)")
    register("mel_png", MelPngWriter, options=PngOptions, description="PNG of sample log-mel spectrograms")
    register("mel_safetensors", MelSafetensorsWriter, options=None,
             description="samples' log-mels, mask and labels as safetensors")


@hookimpl
def register_commands(app):
    from fmkit_audio.cli import app as audio_app

    app.add_typer(audio_app, name="audio")
