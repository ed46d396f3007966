"""Smoke tests of the benchmark scripts in their CI sizes (``pytest bench``): each runs, prints its
table and writes its JSON/markdown. Not in the default test paths (they take about a minute)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.mark.parametrize("script,args,stem", [
    ("bench_engine", ["--quick", "--quiet"], "engine_quick"),
    ("bench_w2", ["--quick"], "w2_quick"),
    ("bench_ot", ["--quick"], "ot_cpu_quick"),
    ("bench_gpu", ["--dry-run"], "gpu_dry_run"),
    ("bench_pairing", ["--quick"], "pairing_cpu_quick"),
])
def test_bench_quick(script: str, args: list[str], stem: str, tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    try:
        mod = __import__(script)
        out = mod.main(args + ["--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert out
    data = json.loads((tmp_path / f"{stem}.json").read_text())
    assert data["command"] and data["hardware"]["torch"]
    assert (tmp_path / f"{stem}.md").read_text().count("|") > 10
