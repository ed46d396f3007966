"""TensorBoard (``trainer.loggers: [tensorboard]``): event files in ``RUN/tensorboard``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fmkit.engine.logger_contract import LoggerRun
from fmkit.engine.trackers import media_kind, require


class TensorBoardLogger:
    """Scalars, the recipe and provenance (as text), sample pictures and 16-bit WAVs to ``RUN/<subdir>``; a resume
    drops the events after the resumed step (``purge_step``), as metrics.csv drops its rows."""

    name = "tensorboard"
    fix = "pip install tensorboard, or remove tensorboard from trainer.loggers"

    def __init__(self, subdir: str = "tensorboard") -> None:
        require("tensorboard", "tensorboard")
        self.subdir = subdir
        self.writer: Any = None

    def start(self, run: LoggerRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run.run_dir / self.subdir), purge_step=run.step + 1 if run.resume else None)
        if not run.resume:
            self.writer.add_text("recipe", _code(run.config), 0)
            self.writer.add_text("provenance", _code(run.provenance), 0)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self.writer is not None:
            for k, v in scalars.items():
                self.writer.add_scalar(k, v, step)

    def log_media(self, step: int, name: str, path: Path) -> None:
        if self.writer is None or media_kind(path) is None:
            return
        if media_kind(path) == "audio":
            clip = _pcm16(path)
            if clip is not None:
                self.writer.add_audio(name, clip[1], step, sample_rate=clip[0])
            return
        import matplotlib.image

        picture = matplotlib.image.imread(str(path))  # [H, W, C] floats in [0, 1] for a PNG
        self.writer.add_image(name, picture[..., :3] if picture.ndim == 3 else picture, step,
                              dataformats="HWC" if picture.ndim == 3 else "HW")

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None


def _pcm16(path: Path) -> tuple[int, Any] | None:
    """``(sample rate, [1, L] floats in [-1, 1])`` of a 16-bit PCM WAV (channels averaged); None for other files."""
    import wave

    import numpy as np
    import torch

    try:
        with wave.open(str(path), "rb") as f:
            if f.getsampwidth() != 2:
                return None
            rate, channels, frames = f.getframerate(), f.getnchannels(), f.readframes(f.getnframes())
    except (wave.Error, EOFError):
        return None
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.float32).reshape(-1, channels).mean(axis=1) / 32768.0
    return rate, torch.from_numpy(pcm)[None]


def _code(record: Mapping[str, Any]) -> str:
    """``record`` as JSON in a Markdown code block (TensorBoard renders text as Markdown)."""
    return "```\n" + json.dumps(record, indent=2, default=str) + "\n```"
