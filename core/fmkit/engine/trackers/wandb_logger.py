"""Weights & Biases (``trainer.loggers: [{name: wandb, project: ...}]``): one W&B run per fmkit run,
its files under ``RUN/wandb``; ``WANDB_MODE=offline`` (or ``mode: offline``) writes it there alone."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fmkit.engine.logger_contract import LoggerRun
from fmkit.engine.trackers import media_kind, require


class WandbLogger:
    """Scalars, the resolved recipe and provenance (as the run's config) and sample pictures and audio
    (``wandb.Image``/``wandb.Audio``). A resume continues the W&B run whose id ``RUN/trackers.json`` keeps.

    Args:
        project, entity, group, tags: where the run is filed in W&B and how it is labelled.
        run_name: the run's display name (default: the run folder's name).
        mode: ``online``, ``offline`` or ``disabled``; None: W&B's own choice (``WANDB_MODE``, the login).
    """

    name = "wandb"
    fix = ("log in with `wandb login` (or set WANDB_API_KEY), or log offline with WANDB_MODE=offline "
           "(`wandb sync RUN/wandb` uploads later); or remove wandb from trainer.loggers")

    def __init__(self, project: str | None = None, entity: str | None = None, run_name: str | None = None,
                 tags: Sequence[str] = (), group: str | None = None, mode: str | None = None) -> None:
        require("wandb", "wandb")
        self.project, self.entity, self.run_name = project, entity, run_name
        self.tags, self.group, self.mode = list(tags), group, mode
        self.run: Any = None

    def start(self, run: LoggerRun) -> None:
        import wandb

        stored = run.stored(self.name) or {}
        self.run = wandb.init(
            project=self.project, entity=self.entity, name=self.run_name or run.run_dir.name, tags=self.tags or None,
            group=self.group, mode=self.mode, dir=str(run.run_dir), id=stored.get("run_id"), resume="allow",
            config={**run.config, "provenance": dict(run.provenance)}, reinit="create_new",
            settings=wandb.Settings(console="off", save_code=False, x_disable_stats=True, silent=True))
        run.store(self.name, {"run_id": self.run.id, "project": self.run.project})

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.run.log(dict(scalars), step=step)

    def log_media(self, step: int, name: str, path: Path) -> None:
        import wandb

        kind = media_kind(path)
        if kind is not None:
            self.run.log({name: (wandb.Image if kind == "image" else wandb.Audio)(str(path))}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
        self.run = None
