"""``python -m fmkit``: the ``fmkit`` command line (the same as the console script)."""

from fmkit.cli import run

if __name__ == "__main__":
    run()
