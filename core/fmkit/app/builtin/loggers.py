"""The options of the core's loggers (``trainer.loggers``); the loggers themselves are the engine's
(:mod:`fmkit.engine.loggers`, :mod:`fmkit.engine.trackers`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorBoardOptions(_Options):
    subdir: str = Field("tensorboard", min_length=1, description="the event files' folder inside the run folder")


class WandbOptions(_Options):
    project: str | None = Field(None, description="W&B project (null: W&B's default, WANDB_PROJECT)")
    entity: str | None = Field(None, description="W&B team or user (null: your default)")
    run_name: str | None = Field(None, description="the run's display name (null: the run folder's name)")
    tags: list[str] = Field([], description="labels of the run")
    group: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="null: W&B's own choice (WANDB_MODE, whether you are logged in)")


class MlflowOptions(_Options):
    tracking_uri: str | None = Field(None, description="file:./mlruns, http://host:5000, ... (null: "
                                     "MLFLOW_TRACKING_URI, else a file store in RUN/mlruns)")
    experiment: str | None = Field(None, description="experiment name, made when missing (null: the recipe's name)")
    run_name: str | None = Field(None, description="the run's name (null: the run folder's name)")
    tags: dict[str, str] = Field({}, description="the run's tags, {key: value}")
