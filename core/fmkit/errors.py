"""User-facing errors.

Every error a user can cause derives from :class:`FmkitError` and carries three parts: *what* went
wrong, *where* (file, key path, step, field) and *how to fix it*. The CLI prints these without a
traceback (``--debug`` shows one).
"""

from __future__ import annotations

import sys


class FmkitError(Exception):
    """Base class: an error caused by input, configuration or environment, not by a bug."""

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"  where: {self.where}")
        if self.fix:
            parts.append(f"  fix:   {self.fix}")
        return "\n".join(parts)


class RecipeError(FmkitError):
    """A recipe file is missing, is not valid YAML, or does not validate."""


class RegistryError(FmkitError):
    """A component name is unknown or registered twice."""


class DataError(FmkitError):
    """A data root is missing or partial, or a record cannot be read."""


class NonFiniteDataError(DataError):
    """A batch holds NaN/Inf where a component needs finite numbers (e.g. an OT coupling's costs)."""

    def __init__(self, what: str, *, fields: list[str], where: str | None = None, fix: str | None = None) -> None:
        self.fields = fields
        super().__init__(what, where=where, fix=fix)


class CheckpointError(FmkitError):
    """A checkpoint is missing, corrupt, unsafe, or does not fit the recipe/model."""


class TrainingError(FmkitError):
    """Training cannot go on (non-finite loss, out of memory, finished run)."""


class ContractError(FmkitError):
    """A component does not keep its contract: a model's forward or output, a metric's result."""


class ModelError(ContractError):
    """A model's (or velocity function's) output does not fit the state: a missing field or a wrong shape."""


class DependencyError(FmkitError):
    """A package that a component needs at use time is not installed (e.g. RDKit for molecule metrics)."""


class OutputError(FmkitError):
    """An output location cannot be written or lies outside the run directory."""


class TrackerError(FmkitError):
    """An experiment tracker (``trainer.loggers``: W&B, MLflow, TensorBoard) cannot start."""


def note(what: str, *, where: str | None = None, fix: str | None = None) -> None:
    """Print a non-fatal note to stderr the way the CLI prints errors: ``note: what`` with its where /
    fix lines (a damaged checkpoint skipped, records dropped), not a Python warning with a source line."""
    from rich.console import Console
    from rich.markup import escape

    text = FmkitError(what, where=where, fix=fix).render()
    Console(stderr=True, file=sys.stderr).print(f"[yellow]note:[/] {escape(text)}", highlight=False, soft_wrap=True)
