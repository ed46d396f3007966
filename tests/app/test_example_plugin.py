"""The example third-party plugin in examples/fmkit-timeseries installs from its own pyproject, is
listed by `fmkit plugins` with its distribution and version, and passes its own tests installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fmkit-timeseries"


def test_the_example_plugin_installs_from_its_pyproject_and_passes_its_tests(tmp_path):
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k not in ("FMKIT_PLUGINS", "FMKIT_DISABLE_PLUGINS", "FMKIT_DEBUG")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])), OMP_NUM_THREADS="1")
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *isolation, "--target", str(site),
                        str(EXAMPLE)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "fmkit", "plugins", "--json"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    ts = next(p for p in doc["plugins"] if p["name"] == "timeseries")
    assert (ts["distribution"], ts["version"]) == ("fmkit-timeseries", "0.1.0") and not doc["broken"]
    mine = {c["name"] for c in doc["components"] if c["plugin"] == "timeseries"}
    assert {"sine_waves", "conv1d", "frequency"} <= mine
    assert doc["recipes"]["sines"]["path"].startswith(str(site))  # the installed copy, shipped as package-data
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0 and "5 passed" in r.stdout, r.stdout + r.stderr
