import pytest


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FMKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fmkit-cache"))

