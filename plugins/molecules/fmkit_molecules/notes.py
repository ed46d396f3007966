"""Non-fatal data notes, printed the way fmkit's CLI prints its own: a yellow ``note:`` followed by
the what / where / fix lines of :class:`fmkit.errors.FmkitError` (not a Python warning with a
source line). They go to stderr, so they never mix with a command's output."""

from __future__ import annotations

from fmkit.plugin import DataError
from rich.console import Console
from rich.markup import escape

_console = Console(stderr=True)


def note(what: str, *, where: str | None = None, fix: str | None = None) -> None:
    """Print one data note (e.g. records skipped, a cache that could not be used) to stderr."""
    text = DataError(what, where=where, fix=fix).render()
    _console.print(f"[yellow]note:[/] {escape(text)}", highlight=False, soft_wrap=True)
