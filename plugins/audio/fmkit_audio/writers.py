"""Writers: WAV files (soundfile, through a selectable vocoder), a spectrogram PNG, samples as safetensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import torch
from fmkit.plugin import ComponentOf, ComponentSpec, Registry, State, note
from pydantic import BaseModel, ConfigDict, Field

from fmkit_audio.levels import Level, at_level, data_peak, level_report, over_full_scale_message
from fmkit_audio.mel import FrontEndOptions


def _front_end(dataset) -> FrontEndOptions:
    return FrontEndOptions(**dataset.info.meta["front_end"])


def denormalised(samples: State, dataset) -> list[torch.Tensor]:
    """Each sample's log-mel ``[M, T_i]`` cut to its real frames, back in log units."""
    meta = dataset.info.meta
    out = []
    for i in range(samples["mel"].shape[0]):
        n = int(samples["mask"][i].sum())
        out.append(samples["mel"][i, :, :n].float() * meta["mel_std"] + meta["mel_mean"])
    return out


def _label(samples: State, dataset, i: int) -> str:
    if "cond" not in samples:
        return "x"
    names = dataset.info.meta.get("class_names") or []
    c = int(samples["cond"][i])
    return names[c] if c < len(names) else str(c)


def _stats_file(dataset, out_dir: Path) -> Path:
    p = out_dir / "mel_stats.json"
    meta = dataset.info.meta
    # the keys MelStats.load reads, so `data.stats` can point at this file
    p.write_text(json.dumps({"mean": meta["mel_mean"], "std": meta["mel_std"], "frames": meta.get("mel_frames", 0),
                             "front_end": meta["front_end"],
                             "peak_level": data_peak(meta)}))
    return p


class WavOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocoder: Annotated[ComponentSpec, ComponentOf("vocoders")] = Field(
        "griffin_lim", description="a registered vocoder: name or {name, ...options}")
    num: int | None = Field(None, ge=1, description="write the first num samples; null: all of them")
    peak: float | None = Field(None, gt=0.0, le=1.0, description="peak of each WAV (full scale 1); null: the "
                               "training clips' typical peak (the data's peak_level, 0.95 when peak-normalised)")


class WavWriter:
    """``step{S}_{i}_{label}.wav`` (16-bit PCM at the front end's rate) for every sample, or the first ``num``;
    ``i`` is zero-padded to sort in sample order and ``label`` is the class name (the digit).

    Each waveform is peak-normalised to the data's level (:mod:`fmkit_audio.levels`), never clamped: no
    written sample reaches full scale. ``levels_step{S}.json`` (and :attr:`report`) give each file's level and
    the samples the vocoder put beyond full scale, which a note also reports.

    fmkit checks the vocoder with the recipe (a ``vocoders`` component: :class:`fmkit.plugin.ComponentOf`)
    and builds the writer with the ``registry`` that holds it; the vocoder is built when the writer
    is (before training, with ``data_info`` from the run's dataset). Built by hand, the writer uses
    the process-wide registry unless given one."""

    def __init__(self, vocoder: ComponentSpec = "griffin_lim", num: int | None = None, peak: float | None = None,
                 *, data_info=None, registry: Registry | None = None) -> None:
        self.vocoder_spec, self.num, self.peak = vocoder, num, peak
        self.report: dict | None = None  # the last call's levels (level_report)
        self.registry = registry
        self._vocoder = None
        self.vocoder_seconds = 0.0  # compute spent in the vocoder (Griffin-Lim counted apart from the flow)
        self.audio_seconds = 0.0  # audio written
        if data_info is not None and "front_end" in (data_info.meta or {}):
            self._build(FrontEndOptions(**data_info.meta["front_end"]))

    def _build(self, fe: FrontEndOptions):
        from fmkit_audio.vocoders import build_vocoder

        if self._vocoder is None:
            self._vocoder = build_vocoder(self.vocoder_spec, fe, where="eval.writers.wav.vocoder",
                                          registry=self.registry)
        return self._vocoder

    def __call__(self, samples: State, out_dir: Path, dataset, step: int) -> list[Path]:
        import time

        import soundfile as sf

        fe = _front_end(dataset)
        vocoder = self._build(fe)
        paths = [_stats_file(dataset, out_dir)]
        peak, names, levels = self.peak or data_peak(dataset.info.meta), [], []
        mels = denormalised(samples, dataset)[: self.num]
        width = max(3, len(str(len(mels) - 1)))
        for i, mel in enumerate(mels):
            t0 = time.perf_counter()
            wav, level = at_level(vocoder(mel[None])[0].cpu(), peak)
            self.vocoder_seconds += time.perf_counter() - t0
            self.audio_seconds += wav.shape[-1] / fe.sample_rate
            p = out_dir / f"step{step:07d}_{i:0{width}d}_{_label(samples, dataset, i)}.wav"
            sf.write(str(p), wav.numpy(), fe.sample_rate, subtype="PCM_16")
            paths.append(p)
            names.append(p.name)
            levels.append(level)
        paths.append(self._report(out_dir / f"levels_step{step:07d}.json", names, levels, peak))
        return paths

    def _report(self, path: Path, names: list[str], levels: list[Level], peak: float) -> Path:
        """``levels_step{S}.json``, and a note when the vocoder's output went beyond full scale."""
        self.report = level_report(names, levels, peak)
        path.write_text(json.dumps(self.report, indent=1) + "\n")
        message = over_full_scale_message(self.report)
        if message is not None:
            note(message, where=str(path), fix="listen to them: mels louder than the data's come from an "
                 "undertrained or diverging model (compare the metric's mel_stat_dist with its real floor)")
        return path


class PngOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num: int = Field(10, ge=1)


class MelPngWriter:
    """One PNG with the first ``num`` log-mel spectrograms, each titled with its label."""

    def __init__(self, num: int = 10) -> None:
        self.num = num

    def __call__(self, samples: State, out_dir: Path, dataset, step: int) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        mels = denormalised(samples, dataset)[: self.num]
        cols = min(5, len(mels))
        rows = -(-len(mels) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.2 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for i, mel in enumerate(mels):
            ax = axes.flat[i]
            ax.imshow(mel.numpy(), origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
            ax.set_title(f"{_label(samples, dataset, i)} ({mel.shape[-1]} fr)", fontsize=8)
        fig.tight_layout()
        p = out_dir / f"mels_step{step:07d}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        return [p]


class MelSafetensorsWriter:
    """``mels_step{S}.safetensors``: log-mels (log units, padded), mask, cond; front end + stats in metadata."""

    def __call__(self, samples: State, out_dir: Path, dataset, step: int) -> list[Path]:
        from safetensors.torch import save_file

        meta = dataset.info.meta
        t = {"log_mel": (samples["mel"].float() * meta["mel_std"] + meta["mel_mean"]).contiguous(),
             "mask": samples["mask"].contiguous()}
        if "cond" in samples:
            t["cond"] = samples["cond"].contiguous()
        p = out_dir / f"mels_step{step:07d}.safetensors"
        save_file(t, str(p), metadata={"front_end": json.dumps(meta["front_end"]), "mel_mean": str(meta["mel_mean"]),
                                       "mel_std": str(meta["mel_std"])})
        return [p]
