"""The level of what a user hears: a vocoded waveform peak-normalised to the data's level, not clamped.

The training clips are peak-normalised (``data.peak_normalise``: a peak of 0.95) or not; either way the
dataset records their typical peak, the median over the training split, as ``info.meta["peak_level"]``.
A waveform from a vocoder is scaled so that its peak is that level (a sample louder than the data is
turned down, a quiet one up), so no written sample reaches full scale. How far the vocoder's output went
beyond full scale (what clamping at +-1 would have clipped) is counted and reported instead: mels louder
than the data's are a finding about the model, which silent clamping hid. The WAV writer and the digit
metric share it, so the metric scores the level the WAV files have.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

#: the peak of peak-normalised clips (``prepare`` in data.py), for data that record no level
DEFAULT_PEAK = 0.95
#: below this peak a waveform is silence, and stays as it is (no gain of 10^6 on rounding noise)
SILENCE = 1e-6
#: a note is given when more than this share of the samples went beyond full scale: Griffin-Lim's phase
#: estimate lets a few samples of a clip at the data's own level overshoot (real test clips: see the README)
NOTE_SHARE = 1e-3


@dataclass(frozen=True)
class Level:
    """One waveform's level: ``peak_in`` (the vocoder's output, full scale 1), the ``gain`` applied,
    ``over_full_scale`` (its samples beyond +-1 before the gain) of ``samples``, and ``rms`` after the gain."""

    peak_in: float
    gain: float
    over_full_scale: int
    samples: int
    rms: float


def typical_peak(peaks: Iterable[float]) -> float:
    """The median of the training clips' peaks (``DEFAULT_PEAK`` for none): the level samples are written at."""
    values = [p for p in peaks if p > SILENCE]
    return float(statistics.median(values)) if values else DEFAULT_PEAK


def data_peak(meta: Mapping[str, Any]) -> float:
    """The level recorded by the dataset (``meta["peak_level"]``), else ``DEFAULT_PEAK``."""
    return float(meta.get("peak_level") or DEFAULT_PEAK)


def at_level(wav: Tensor, peak: float) -> tuple[Tensor, Level]:
    """``wav`` [L] (float, full scale 1) scaled to the peak ``peak`` (<= 1), and its :class:`Level`."""
    p = float(wav.abs().max()) if wav.numel() else 0.0
    gain = peak / p if p > SILENCE else 1.0
    out = wav * gain
    rms = float(out.float().pow(2).mean().sqrt()) if wav.numel() else 0.0
    return out, Level(p, gain, int((wav.abs() > 1.0).sum()), int(wav.numel()), rms)


def level_report(names: Sequence[str], levels: Sequence[Level], peak: float) -> dict[str, Any]:
    """The writer's report: the target ``peak``, each file's level, and the totals beyond full scale."""
    over = [lv for lv in levels if lv.over_full_scale]
    return {"target_peak": peak, "files": {n: asdict(lv) for n, lv in zip(names, levels)},
            "samples_over_full_scale": sum(lv.over_full_scale for lv in levels),
            "samples": sum(lv.samples for lv in levels), "files_over_full_scale": len(over),
            "max_peak_in": max((lv.peak_in for lv in levels), default=0.0)}


def over_full_scale_message(report: Mapping[str, Any]) -> str | None:
    """What a note says when more than ``NOTE_SHARE`` of the vocoder's output went beyond full scale (else None;
    the report counts every such sample)."""
    n = report["samples_over_full_scale"]
    if n <= NOTE_SHARE * report["samples"]:
        return None
    return (f"the vocoder's output of {report['files_over_full_scale']} of {len(report['files'])} WAV(s) went beyond "
            f"full scale ({n:,} of {report['samples']:,} samples, peak {report['max_peak_in']:.2f}); they were "
            f"scaled to the training clips' peak {report['target_peak']:.2f}, not clipped")
