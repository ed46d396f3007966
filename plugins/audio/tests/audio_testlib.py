"""Helpers of the audio plugin's tests: synthetic spoken-digit-like data in FSDD's layout, the real
FSDD when $FMKIT_DATA_DIR holds it, and a run of the ``fmkit`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SR = 8000


def real_fsdd() -> Path | None:
    """``$FMKIT_DATA_DIR/fsdd`` when it holds the recordings (folder or the shared tarball)."""
    d = os.environ.get("FMKIT_DATA_DIR")
    p = Path(d) / "fsdd" if d else None
    if p is not None and ((p / "recordings").is_dir() or (p / "fsdd_recordings.tar.gz").is_file()):
        return p
    return None


def synth_digit(digit: int, speaker: int, take: int, sr: int = SR) -> np.ndarray:
    """A voiced 'word' whose spectral envelope peak glides from a digit-specific start to a digit-specific
    end frequency (a caricature of a formant transition), with a speaker-specific pitch, a
    digit-specific duration and 60 ms of faint noise before and after (for the silence trimming)."""
    rng = np.random.default_rng([digit, speaker, take])
    dur = 0.22 + 0.025 * digit + 0.02 * rng.random()
    t = np.arange(int(dur * sr)) / sr
    f0 = 105.0 + 30.0 * speaker + 4.0 * rng.standard_normal()
    fa, fb = 350.0 + 290.0 * digit, 3100.0 - 230.0 * ((digit * 7) % 10)
    peak = fa + (fb - fa) * (t / dur)
    wav = np.zeros_like(t)
    for h in range(1, int(3900 // f0)):
        amp = np.exp(-(((h * f0) - peak) / 350.0) ** 2)
        wav += amp * np.sin(2 * np.pi * h * f0 * t + rng.random() * 6.28)
    env = np.sin(np.pi * t / dur) ** 0.5
    wav = 0.5 * env * wav / (np.abs(wav).max() + 1e-9)
    pad = int(0.06 * sr)
    out = np.concatenate([np.zeros(pad), wav, np.zeros(pad)])
    return (out + 1e-3 * rng.standard_normal(out.shape)).astype(np.float32)


def make_fsdd(root: Path, speakers: int = 2, takes: int = 10, digits: range = range(10)) -> Path:
    """Write ``root/recordings/{digit}_synth{a,b,..}_{take}.wav`` (16-bit PCM, 8 kHz): takes 0-4 are FSDD's
    test split, the rest train. Returns ``root``."""
    import soundfile as sf

    rec = root / "recordings"
    rec.mkdir(parents=True, exist_ok=True)
    for d in digits:
        for s in range(speakers):
            for k in range(takes):
                sf.write(str(rec / f"{d}_synth{chr(97 + s)}_{k}.wav"), synth_digit(d, s, k), SR, subtype="PCM_16")
    return root


def run_fmkit(args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m fmkit ARGS`` in a fresh process (entry points discovered as a user's shell would)."""
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "fmkit", *args], capture_output=True, text=True, env=e, cwd=cwd,
                          timeout=timeout)
