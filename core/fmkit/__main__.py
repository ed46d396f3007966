"""``python -m fmkit``: the ``fmkit`` command line (the same as the console script)."""

from fmkit.app.cli import run

if __name__ == "__main__":
    run()
