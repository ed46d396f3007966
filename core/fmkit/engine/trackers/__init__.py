"""Experiment trackers a fit can log to besides ``metrics.csv`` (``trainer.loggers``): TensorBoard,
Weights & Biases and MLflow, each imported only when a recipe names it (``pip install 'fmkit[trackers]'``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fmkit.errors import DependencyError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg"})


def require(module: str, tracker: str, package: str | None = None) -> None:
    """Refuse, before training, a tracker whose library is not installed (what / where / fix)."""
    if importlib.util.find_spec(module) is None:
        raise DependencyError(f"the {tracker} tracker needs the {package or module!r} package, which is not installed",
                              where=f"trainer.loggers ({tracker})",
                              fix=f"pip install {package or module} (or pip install 'fmkit[trackers]' for every "
                                  f"tracker), or remove {tracker} from trainer.loggers")


def media_kind(path: Path) -> str | None:
    """``"image"``, ``"audio"`` or None (a file trackers keep as an artefact at most), by its suffix."""
    suffix = Path(path).suffix.lower()
    return "image" if suffix in IMAGE_SUFFIXES else "audio" if suffix in AUDIO_SUFFIXES else None
