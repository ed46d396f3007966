"""``python -m fmkit`` and the ``fmkit`` console script: the command line.

The entry point is this small module so that a Ctrl-C (or a scheduler's SIGTERM) during the second
that importing torch and the CLI takes ends with ``interrupted`` and exit 130, as it does later,
instead of a KeyboardInterrupt traceback."""

from __future__ import annotations

import signal
import sys
import threading


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        from fmkit.app.cli import run
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    run()


if __name__ == "__main__":
    main()
