from pathlib import Path

import pytest
from audio_testlib import make_fsdd, real_fsdd


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    """Statistics and classifiers go to a per-session cache, never the user's ~/.cache."""
    monkeypatch.setenv("FMKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fmkit-cache"))


@pytest.fixture(scope="session")
def synth_fsdd(tmp_path_factory) -> Path:
    """A generated FSDD-shaped folder: 10 digits x 2 speakers x 10 takes (100 test, 100 train clips)."""
    return make_fsdd(tmp_path_factory.mktemp("synth_fsdd"))


@pytest.fixture(scope="session")
def digits_root(synth_fsdd) -> Path:
    """The real FSDD when $FMKIT_DATA_DIR has it, else the generated one."""
    return real_fsdd() or synth_fsdd
