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
    ("bench_fewstep", ["--quick"], "fewstep_quick"),
    ("fewstep_toy_meanflow", ["--quick"], "fewstep_toy_meanflow_quick"),
    ("bench_threads", ["--quick"], "threads_quick"),
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


def fake_result(w: str, b: int, prec: str, comp: bool) -> dict:
    """What bench_gpu.run_variant returns, with placeholder figures (the tests check order and flow only)."""
    return {"workload": w, "batch": b, "precision": prec, "compile": comp, "device": "cpu", "steps_per_s": 1.0,
            "samples_per_s": 1.0, "busy_fraction": 1.0, "model_only_ms": 1.0, "kernel_busy_fraction": None,
            "peak_mib": None, "warmup_s": 0.0, "params": 1}


def test_bench_gpu_runs_the_most_wanted_variants_first_and_keeps_to_its_budget(tmp_path: Path, monkeypatch) -> None:
    """A device call is cut at its time limit: every workload's recipe setting (fp32 eager) must come
    first, and --budget must start no variant that the finished ones say would not fit."""
    import time

    import bench_gpu

    calls = []

    def fake(a, w, b, prec, comp):
        calls.append((w, prec, comp))
        time.sleep(0.3)
        return fake_result(w, b, prec, comp)

    monkeypatch.setattr(bench_gpu, "run_variant", fake)
    out = bench_gpu.main(["--dry-run", "--with-compile", "--workloads", "egnn", "mlp", "--out", str(tmp_path)])
    # eager settings in the order asked for; compile settings cheapest compile first
    assert calls == [("egnn", "fp32", False), ("mlp", "fp32", False), ("egnn", "bf16", False), ("mlp", "bf16", False),
                     ("mlp", "bf16", True), ("egnn", "bf16", True), ("mlp", "fp32", True), ("egnn", "fp32", True)]
    assert [(r["workload"], r["precision"], r["compile"]) for r in out["results"]] == calls
    calls.clear()
    out = bench_gpu.main(["--dry-run", "--workloads", "mlp", "egnn", "--budget", "0.75", "--out", str(tmp_path)])
    assert calls == [("mlp", "fp32", False), ("egnn", "fp32", False)]  # 0.6 s spent + 0.3 s more > 0.75 s
    skipped = [r for r in out["results"] if r.get("error", "").startswith("skipped")]
    assert [(r["workload"], r["precision"]) for r in skipped] == [("mlp", "bf16"), ("egnn", "bf16")]
    assert "skipped" in (tmp_path / "gpu_dry_run.md").read_text()


def test_bench_engine_fast_engine_runs_and_is_compared(tmp_path: Path) -> None:
    """fmkit_fast (bf16 autocast + torch.compile; the GPU comparison's engine) runs here on the CPU and
    gets its own paired-ratio column."""
    import bench_engine
    import torch

    threads = torch.get_num_threads()
    try:
        out = bench_engine.main(["--quick", "--quiet", "--engines", "fmkit", "fmkit_fast", "--couplings",
                                 "independent", "--out", str(tmp_path), "--name", "engine_fast"])
    finally:
        torch.set_num_threads(threads)
    wall = out["results"][0]["wall_time"]
    assert set(wall["fmkit_fast_speed_ratio_vs"]) == {"fmkit"} and set(wall["fmkit_speed_ratio_vs"]) == {"fmkit_fast"}
    assert "fmkit_fast speed / this engine" in (tmp_path / "engine_fast.md").read_text()


def test_bench_gpu_compile_variants_time_no_recompile(tmp_path: Path) -> None:
    """Molecule batches change their atom count, so torch.compile recompiles on new sizes: the compile
    variants must warm up until that stops, or seconds of compiling land inside the timed steps (seen
    here before the settle loop: the compiled tiny EGNN timed at 4 steps/s against 200 eager)."""
    pytest.importorskip("fmkit_molecules")
    import bench_gpu
    import torch
    import torch._dynamo

    threads = torch.get_num_threads()
    torch._dynamo.reset()
    try:
        args = ["--dry-run", "--with-compile", "--workloads", "egnn", "--precisions", "fp32", "--out", str(tmp_path)]
        out = bench_gpu.main(args)
    finally:
        torch._dynamo.reset()
        torch.set_num_threads(threads)
    compiled = [r for r in out["results"] if r["compile"]]
    assert len(compiled) == 1 and "error" not in compiled[0]
    assert compiled[0]["warmup_steps"] > 2  # the settle loop ran past the fixed warm-up
    assert compiled[0]["recompiles_timed"] == 0
    assert compiled[0]["warmup_steps"] <= 2 + 10 * 5  # and stopped (dry-run: --compile-settle 5)


def test_bench_gpu_stops_when_interrupted_and_keeps_what_it_measured(tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C or a timeout's signal stops the Trainer with TrainingInterrupted: bench_gpu must stop there
    (it used to record an error and start the next variant, so a killed run kept running) and write
    the variants measured so far, marked partial."""
    import bench_gpu
    from fmkit.engine.stopping import TrainingInterrupted

    calls = []

    def fake(a, w, b, prec, comp):
        calls.append((w, prec))
        if prec == "bf16":
            raise TrainingInterrupted("training stopped by SIGTERM at step 3")
        return fake_result(w, b, prec, comp)

    monkeypatch.setattr(bench_gpu, "run_variant", fake)
    out = bench_gpu.main(["--dry-run", "--workloads", "mlp", "egnn", "--out", str(tmp_path)])
    assert calls == [("mlp", "fp32"), ("egnn", "fp32"), ("mlp", "bf16")]  # nothing after the interrupted one
    assert [r.get("error", "ok")[:11] for r in out["results"]] == ["ok", "ok", "interrupted"]
    data = json.loads((tmp_path / "gpu_dry_run.json").read_text())
    assert data["complete"] is False and len(data["results"]) == 3
    assert "PARTIAL" in (tmp_path / "gpu_dry_run.md").read_text()


def test_bench_sample_route_quick(tmp_path: Path) -> None:
    """The CLI's sampling route against bench_image's loop, on a 1-step images_mnist_cpu run it makes (real MNIST)."""
    import os

    import torch

    if not (Path(os.environ.get("FMKIT_DATA_DIR", "/nonexistent")) / "mnist").is_dir():
        pytest.skip("needs real MNIST under $FMKIT_DATA_DIR/mnist to make its run")
    threads = torch.get_num_threads()
    try:
        out = __import__("bench_sample_route").main([str(tmp_path / "run"), "--train-steps", "1", "--quick",
                                                     "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert set(out) == {"wall", "cpu"} and out["wall"]["ratio_median"] > 0
    data = json.loads((tmp_path / "sample_route.json").read_text())
    assert data["totals"]["cli"]["user"] > 0 and data["load_avg"]["before"]


def test_mnist_vs_torchcfm_quick(tmp_path: Path, monkeypatch) -> None:
    """Both arms a few steps on real MNIST, scored by a small classifier trained here: the table and the ratios."""
    import os

    import torch

    if not (Path(os.environ.get("FMKIT_DATA_DIR", "/nonexistent")) / "mnist").is_dir():
        pytest.skip("needs real MNIST under $FMKIT_DATA_DIR/mnist")
    pytest.importorskip("torchcfm", reason="the peer: pip install --no-deps torchcfm")
    from typer.testing import CliRunner

    from fmkit_image.cli import app as image_app

    monkeypatch.setenv("FMKIT_CACHE_DIR", str(tmp_path / "cache"))
    res = CliRunner().invoke(image_app, ["train-classifier", "--dataset", "mnist", "--limit", "500", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    threads = torch.get_num_threads()
    try:
        text = __import__("mnist_vs_torchcfm").main(["--quick", "--per-class", "3", "--out", str(tmp_path / "o")])
    finally:
        torch.set_num_threads(threads)
    fm = json.loads((tmp_path / "o" / "fmkit_seed0.json").read_text())
    peer = json.loads((tmp_path / "o" / "torchcfm_seed0.json").read_text())
    assert fm["steps"] == 6 and peer["steps"] == 6 and fm["n"] == peer["n"] == 30
    assert {"class_acc", "cfd", "cfd_floor"} <= set(fm["w2"]) and peer["w1"]["cfd"] > 0
    assert "| 0 | fmkit |" in text and "| 0 | torchcfm |" in text and "CFD ratio" in text


def test_mnist_meanflow_quick(tmp_path: Path, monkeypatch) -> None:
    """The MeanFlow recipe a few steps on real MNIST, scored at 1, 2, 4 jumps and as an ODE beside the FM run's rows."""
    import os

    import torch

    if not (Path(os.environ.get("FMKIT_DATA_DIR", "/nonexistent")) / "mnist").is_dir():
        pytest.skip("needs real MNIST under $FMKIT_DATA_DIR/mnist")
    from typer.testing import CliRunner

    from fmkit_image.cli import app as image_app

    monkeypatch.setenv("FMKIT_CACHE_DIR", str(tmp_path / "cache"))
    res = CliRunner().invoke(image_app, ["train-classifier", "--dataset", "mnist", "--limit", "500", "--epochs", "1"])
    assert res.exit_code == 0, res.output
    threads = torch.get_num_threads()
    try:
        __import__("mnist_vs_torchcfm").main(["--quick", "--arms", "fmkit", "--per-class", "3", "--guidance", "1",
                                              "1.4", "--out", str(tmp_path / "fm")])
        text = __import__("mnist_meanflow").main(["--quick", "--per-class", "3", "--fm",
                                                  str(tmp_path / "fm" / "fmkit_seed0.json"), "--out",
                                                  str(tmp_path / "mf")])
    finally:
        torch.set_num_threads(threads)
    mf = json.loads((tmp_path / "mf" / "meanflow_seed0.json").read_text())
    assert mf["steps"] == 4 and mf["n"] == 30 and mf["folded_guidance"] == 1.4
    assert {"class_acc", "cfd", "cfd_floor"} <= set(mf["jump1"]) and mf["ode"]["nfe"] == 20
    assert "| MeanFlow |" in text and "| flow matching |" in text and "MeanFlow at 1 NFE over flow matching" in text
    # guidance as a model input: trained over a range, sampled at two scales handed to the model
    text = __import__("mnist_meanflow").main(["--quick", "--per-class", "3", "--fm",
                                              str(tmp_path / "fm" / "fmkit_seed0.json"), "--out", str(tmp_path / "gi"),
                                              "--set", "model.guidance_input=true", "--set",
                                              "objective={name: meanflow, guidance_range: [1, 3]}",
                                              "--guidance", "1", "2"])
    gi = json.loads((tmp_path / "gi" / "meanflow_seed0.json").read_text())
    assert gi["guidance_range"] == [1.0, 3.0] and gi["jump1_w2"]["guidance"] == 2.0 and "jump1" not in gi
    assert "2 (model input" in text
