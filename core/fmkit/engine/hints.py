"""How the engine's error messages tell a user to fix things: the front end that built the trainer
knows (a library call, or ``fmkit train`` from a recipe), the engine does not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fmkit.errors import OutputError


@dataclass(frozen=True)
class FixHints:
    """The fixes a :class:`~fmkit.engine.trainer.Trainer` prints. The defaults speak to a library user;
    :meth:`cli` to a user of ``fmkit train``. ``None`` fields fall back to the checkpoint module's wording."""

    #: how to continue an interrupted run (``{run_dir}`` is filled in)
    resume: str = "resume with `trainer.fit(resume=True)` (same run_dir)"
    #: a checkpoint whose fingerprint differs
    fingerprint: str | None = "pass the fingerprint the run was started with, or use another run_dir"
    #: what the trainer's fingerprint is called in that message
    fingerprint_label: str = "this trainer's fingerprint"
    #: weights that do not fit the model
    model: str | None = "build the model the checkpoint was trained with"
    #: how to set a trainer option (``{key}``, ``{value}`` are filled in)
    option: str = "TrainerOptions({key}={value})"

    @classmethod
    def cli(cls) -> FixHints:
        """For a trainer built from a recipe (``fmkit.app.run.build_trainer``)."""
        return cls(resume="resume with `fmkit train --resume {run_dir}`", fingerprint=None,
                   fingerprint_label="this recipe", model=None, option="--set trainer.{key}={value}")

    def resume_hint(self, run_dir: Path | None) -> str:
        return self.resume.format(run_dir=run_dir)

    def set_option(self, key: str, value: object) -> str:
        """How to set trainer option ``key`` to ``value`` (``--set trainer.lr=0.001``, ``TrainerOptions(lr=0.001)``)."""
        return self.option.format(key=key, value=value)

    def then_resume(self, exc: OutputError, run_dir: Path | None, more: str = "") -> OutputError:
        """``exc`` (a file of the run that could not be written; ``more`` added to its message) with how to go
        on once that is fixed."""
        return OutputError(exc.what + more, where=exc.where, fix=f"{exc.fix}, then {self.resume_hint(run_dir)}")
