"""``python -m fmkit`` and the ``fmkit`` console script: the command line.

The entry point is this small module so that a Ctrl-C (or a scheduler's SIGTERM, or SIGHUP) during
the second or two that importing torch, the CLI and the installed plugins takes ends with
``interrupted`` and exit 130, as it does later. The signal is held until those imports are done: a
KeyboardInterrupt raised inside one (numpy's, scipy's or torch's C++ initialisation) could abort the
process with a C++ ``terminate`` (exit 134) or leave a module half-imported, to fail later with an
error blamed on a plugin. A second signal while they run ends the process at once."""

from __future__ import annotations

import os
import signal
import sys
import threading

#: the signals held while fmkit starts
STARTUP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StartupSignals:
    """Holds stop signals while fmkit imports: the first is remembered (:attr:`received`), a second
    ends the process at once with exit 130. :meth:`release` puts the previous handlers back."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._old: dict[int, object] = {}

    def _hold(self, signum: int, frame: object) -> None:
        if self.received is not None:  # asked twice: the imports may hang, so leave now
            os.write(2, b"interrupted\n")
            os._exit(130)
        self.received = signum

    def install(self) -> StartupSignals:
        if threading.current_thread() is threading.main_thread():
            # a signal ignored (nohup, a background job of a script) stays ignored
            self._old = {sig: signal.signal(sig, self._hold) for sig in STARTUP_SIGNALS
                         if signal.getsignal(sig) is not signal.SIG_IGN}
        return self

    def release(self) -> int | None:
        """The previous handlers back; returns the signal received meanwhile, if any."""
        for sig, handler in self._old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._old = {}
        return self.received


def main() -> None:
    held = StartupSignals().install()
    try:
        from fmkit.app.cli import load_plugins, run

        load_plugins()  # the installed plugins import here too (numpy, scipy, torchaudio, ...)
    finally:
        received = held.release()
    if received is not None:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    run()


if __name__ == "__main__":
    main()
