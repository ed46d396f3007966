"""The ``fmkit`` command line (typer): train, sample, evaluate, reflow, export, push, curves, plugins, recipe.

One module per group of commands (:mod:`.train`, :mod:`.generate`, :mod:`.share`, :mod:`.inspect_cmds`), the
shared apps and options in :mod:`.common`; the library work they call lives in :mod:`fmkit.app`.
User errors (:class:`fmkit.errors.FmkitError`) print as *what / where / fix* without a traceback;
``fmkit --debug ...`` (or ``FMKIT_DEBUG=1``) shows one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import typer

# isort: off
# the commands register on `app` as these import; `fmkit --help` lists them in this order
from fmkit.app.cli import train, generate, share, inspect_cmds  # noqa: F401
# isort: on
from fmkit.app.cli.common import _STATE, MAX_SAMPLES, app, err_console, registry
from fmkit.errors import FmkitError

__all__ = ["MAX_SAMPLES", "app", "as_new_process", "load_plugins", "run"]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run() -> None:
    """Console-script entry point with user-friendly errors."""
    old = {}
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a scheduler) and SIGHUP (a closed terminal) end any command as Ctrl-C does: a message
        # and exit 130, not a silent -15; `fmkit train` installs its own handlers, which save first
        old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        _run()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _run() -> None:
    try:
        _registry_commands()
        rv = app(standalone_mode=False, prog_name="fmkit")  # also under `python -m fmkit`
        # without standalone mode, typer *returns* the code of an Exit (130 for a Ctrl-C it caught)
        if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
            if rv == 130:
                _interrupted()
            sys.exit(rv)
    except FmkitError as exc:
        if _STATE["debug"]:
            raise
        from rich.markup import escape  # user text may hold [brackets]; never parse it as markup

        from fmkit.engine.stopping import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted) and os.environ.get("RANK", "0") != "0":
            sys.exit(exc.exit_code)  # every rank stopped at the same step: rank 0 says so, once
        label = "[bold yellow]stopped:[/]" if isinstance(exc, TrainingInterrupted) else "[bold red]error:[/]"
        err_console.print(f"{label} {escape(exc.render())}", markup=True, highlight=False, soft_wrap=True)
        if exc.exit_code == 130:
            clear_unhandled_interrupt()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _interrupted()
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code if isinstance(code, int) else 0)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or _STATE["debug"]:
            _unexpected(exc)
        from rich.markup import escape

        where = f"\n  where: {escape(str(exc.filename))}" if exc.filename else ""
        err_console.print(f"[bold red]error:[/] no space left on the device ({escape(exc.strerror or str(exc))})"
                          f"{where}\n  fix:   free space on that disk; a run goes on from its last complete "
                          "checkpoint with `fmkit train --resume RUN`", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:  # usage errors and genuine bugs
        _unexpected(exc)


def _interrupted() -> None:
    """Say ``interrupted`` and exit 130. A KeyboardInterrupt that went through code an extension ran
    with ``PyRun_String`` (a lazy import inside torch, say) sets CPython's
    ``_Py_UnhandledKeyboardInterrupt`` although fmkit handled it, and the interpreter would then end by
    killing itself with SIGINT (exit -2, not the documented 130): the flag is cleared first."""
    err_console.print("[bold red]interrupted[/]")
    clear_unhandled_interrupt()
    sys.exit(130)


def clear_unhandled_interrupt() -> None:
    """Clear CPython's record of an unhandled KeyboardInterrupt (see :func:`_interrupted`); a no-op where
    the interpreter has no such symbol."""
    try:
        import ctypes

        ctypes.c_int.in_dll(ctypes.pythonapi, "_Py_UnhandledKeyboardInterrupt").value = 0
    except (AttributeError, OSError, ValueError):
        pass


def _unexpected(exc: Exception) -> None:
    """Report an exception that is no FmkitError: a usage error, a plugin's bug, or fmkit's own."""
    # usage errors: click's, or the copy of click that recent typer vendors (no `click` module then)
    if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
        exc.show()
        sys.exit(exc.exit_code)
    if type(exc).__name__ == "Abort":
        # click turns EOFError and KeyboardInterrupt raised anywhere into a silent Abort; fmkit has
        # no prompts, so an EOFError is a file that ended early (a truncated data file, say)
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, KeyboardInterrupt):
            _interrupted()
        if not isinstance(cause, EOFError):
            sys.exit(1)
        if _STATE["debug"]:
            raise cause
        from rich.markup import escape

        err_console.print(f"[bold red]error:[/] a file ended unexpectedly ({escape(f'EOFError: {cause}')})\n"
                          "  fix:   a data or checkpoint file is probably truncated: check the files the recipe "
                          "reads (rerun with `fmkit --debug ...` to see which one)", highlight=False, soft_wrap=True)
        sys.exit(1)
    if _STATE["debug"]:
        raise
    from rich.markup import escape

    culprit = _plugin_frame(exc)
    if culprit is not None:  # the innermost frame of fmkit or a plugin is the plugin's: not our bug
        plugin, place = culprit
        err_console.print(f"[bold red]error in plugin {escape(repr(plugin))}[/] ({escape(place)}): "
                          f"{escape(f'{type(exc).__name__}: {exc}')}\n"
                          "  fix:   this is a bug in that plugin or its use; report it to its authors (fmkit is "
                          "not the cause); `fmkit --debug ...` shows the traceback",
                          highlight=False, soft_wrap=True)
        sys.exit(1)
    err_console.print(f"[bold red]internal error:[/] {escape(f'{type(exc).__name__}: {exc}')}\n"
                      "  rerun with `fmkit --debug ...` for the traceback, and please report it", highlight=False,
                      soft_wrap=True)
    sys.exit(1)


def _plugin_frame(exc: BaseException) -> tuple[str, str] | None:
    """(plugin name, ``pkg/file.py:LINE, in FUNC``) when the innermost traceback frame that belongs to
    fmkit or to a registered plugin is the plugin's; None when it is fmkit's (or nobody's). Frames
    of torch, numpy, the standard library and other packages are passed over: a plugin's forward
    failing inside torch is the plugin's."""
    import traceback

    try:
        packages = registry().plugin_packages()
    except Exception:  # a registry that cannot even load blames nobody
        return None
    for frame, lineno in reversed(list(traceback.walk_tb(exc.__traceback__))):
        root = str(frame.f_globals.get("__name__", "")).split(".")[0]
        if root == "fmkit":
            return None
        if root in packages:
            return packages[root], f"{_short_file(frame.f_code.co_filename, root)}:{lineno}, in {frame.f_code.co_name}"
    return None


def _short_file(filename: str, root: str) -> str:
    """``filename`` from its top-level package on (``fmkit_ring/net.py``)."""
    top = sys.modules.get(root)
    base = getattr(top, "__file__", None)
    if base:
        base_dir = Path(base).parent.parent if Path(base).name == "__init__.py" else Path(base).parent
        try:
            return Path(filename).relative_to(base_dir).as_posix()
        except ValueError:
            pass
    return Path(filename).name


_commands_added = False


def load_plugins() -> None:
    """Import the installed plugins and add their commands ahead of :func:`run`, while
    ``fmkit.__main__`` holds stop signals; a failure is left for :func:`run` to report."""
    global _commands_added
    try:
        _registry_commands()
    except Exception:  # noqa: BLE001 - run() tries again and reports what went wrong
        _commands_added = False


@contextlib.contextmanager
def as_new_process() -> Iterator[None]:
    """Inside the block, :func:`run` behaves as in a new ``fmkit`` process (no ``--debug``; the plugin
    sub-commands of the registry in use now are added); after it, the app is as it was before."""
    global _commands_added
    added, debug = _commands_added, _STATE["debug"]
    groups, commands = list(app.registered_groups), list(app.registered_commands)
    _commands_added, _STATE["debug"] = False, False
    try:
        yield
    finally:
        _commands_added, _STATE["debug"] = added, debug
        app.registered_groups[:], app.registered_commands[:] = groups, commands


def _registry_commands() -> None:
    global _commands_added
    if not _commands_added:
        _commands_added = True
        registry().add_commands(app)


if __name__ == "__main__":
    run()
