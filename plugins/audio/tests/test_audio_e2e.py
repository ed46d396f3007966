"""End to end on the CPU, through the ``fmkit`` command: a run on a few real digits (FSDD from
$FMKIT_DATA_DIR, or generated digits in its layout without it) writes WAVs, a PNG, the samples and the
audio_digits metrics; ``fmkit audio train-classifier`` trains with a fixed seed and then reads its cache."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from audio_testlib import run_fmkit

from fmkit_audio.classifier import train_classifier
from fmkit_audio.data import build_fsdd


def e2e_recipe(root, tmp_path):
    rec = {
        "name": "audio_e2e", "seed": 0,
        "data": {"name": "fsdd", "root": str(root), "limit": 100},  # 10 clips a digit (test split: 10 a digit)
        "model": {"name": "mel_unet", "channels": [32, 64], "res_blocks": 1, "attn_blocks": 1, "mid_blocks": 1,
                  "heads": 4, "emb_dim": 64},
        "path": {"name": "condot"}, "solver": {"name": "euler", "steps": 4},
        "trainer": {"steps": 30, "batch_size": 16, "lr": 1e-3, "device": "cpu", "cpu_threads": 2, "progress": False,
                    "checkpoint_every": 1000, "cond_dropout": 0.15, "log_every": 10},
        "eval": {"every": 0, "num_samples": 20, "batch_size": 20, "guidance_scale": 2.0,
                 "metrics": [{"name": "audio_digits", "classifier_epochs": 20,
                              "vocoder": {"name": "griffin_lim", "n_iter": 16}}],
                 "writers": [{"name": "wav", "vocoder": {"name": "griffin_lim", "n_iter": 16}, "num": 4},
                             {"name": "mel_png", "num": 10}, {"name": "mel_safetensors"}]},
    }
    p = tmp_path / "audio_e2e.yaml"
    p.write_text(yaml.safe_dump(rec))
    return p


def test_cpu_run_on_a_few_digits_writes_wavs_png_and_metrics(digits_root, tmp_path):
    recipe = e2e_recipe(digits_root, tmp_path)
    run = tmp_path / "run"
    r = run_fmkit(["train", str(recipe), "--out", str(run)], env={"FMKIT_CACHE_DIR": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stdout + r.stderr
    out = run / "samples"
    wavs = sorted(out.glob("step0000030_*.wav"))
    assert len(wavs) == 4 and all(w.stat().st_size > 1000 for w in wavs)
    png = out / "mels_step0000030.png"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert (out / "mels_step0000030.safetensors").is_file() and (out / "mel_stats.json").is_file()
    with open(run / "metrics.csv", newline="") as f:  # long format: step,name,value
        m = {row["name"]: float(row["value"]) for row in csv.DictReader(f)
             if row["name"].startswith("eval/") and row["step"] == "30"}
    assert "eval/digit_acc_vocoded" in m, "no evaluation at step 30 in metrics.csv"
    for k in ("digit_acc_vocoded", "digit_acc_mel", "digit_acc_ceiling", "digit_acc_ceiling_mel", "fd_vocoded",
              "fd_mel", "fd_floor", "fd_floor_mel", "is_vocoded", "is_mel", "is_real_vocoded", "is_real_mel",
              "mel_stat_dist", "mel_stat_dist_real"):
        assert math.isfinite(m[f"eval/{k}"]), k
    for kind in ("vocoded", "mel"):
        assert 0.0 <= m[f"eval/digit_acc_{kind}"] <= 1.0 and m[f"eval/fd_{kind}"] >= 0.0
        assert 1.0 <= m[f"eval/is_{kind}"] <= 10.0
    assert m["eval/digit_acc_ceiling_mel"] >= 0.3, m  # above chance (0.1): its classifier learnt from 100 clips
    assert m["eval/digit_acc_ceiling"] >= 0.3, m  # and hears the real clips through Griffin-Lim too
    assert m["eval/n_fd"] == 20
    table = r.stdout[r.stdout.index("evaluation at step 30"):]
    assert table.index("digit_acc_vocoded") < table.index("digit_acc_mel")  # the table leads with what is heard
    assert "digit_acc_ceiling" in table and "fd_floor" in table  # the floors and ceilings are printed

    # the repo's quality + real-time-factor bench on this run (skipped for an installed plugin alone)
    bench = Path(__file__).resolve().parents[3] / "bench" / "audio_quality.py"
    if not bench.is_file():
        return
    q = subprocess.run([sys.executable, str(bench), str(run), "--steps", "2", "-n", "20", "--chunk", "20",
                        "--gl-iter", "8", "--out", str(tmp_path / "q")], capture_output=True, text=True,
                       env={**os.environ, "FMKIT_CACHE_DIR": str(tmp_path / "cache")}, timeout=300)
    assert q.returncode == 0, q.stdout + q.stderr
    res = json.loads((tmp_path / "q" / "quality.json").read_text())
    fe_hop, sr = 128, 8000
    assert res["audio_seconds"] == pytest.approx(sum((n - 1) * fe_hop for n in _lengths(run)) / sr, rel=0.5)
    assert res["flow_seconds"] > 0 and res["vocoder_seconds"] > 0 and res["nfe"] == 2
    assert res["rtf_flow"] == pytest.approx(res["audio_seconds"] / res["flow_seconds"], rel=1e-3)  # json rounds
    assert res["rtf_vocoder"] == pytest.approx(res["audio_seconds"] / res["vocoder_seconds"], rel=1e-3)
    assert res["rtf_total"] < min(res["rtf_flow"], res["rtf_vocoder"])
    assert (tmp_path / "q" / "mels.png").is_file() and len(list((tmp_path / "q").glob("digit*.wav"))) >= 5


def _lengths(run):
    """Frames of the samples the run's final evaluation wrote (20 samples of the same length law)."""
    from safetensors.torch import load_file

    st = load_file(str(next((run / "samples").glob("mels_step*.safetensors"))))
    return [int(n) for n in st["mask"].sum(dim=(1, 2))]


def test_train_classifier_command_fixed_seed_then_cached(synth_fsdd, tmp_path):
    recipe = e2e_recipe(synth_fsdd, tmp_path)
    env = {"FMKIT_CACHE_DIR": str(tmp_path / "cache")}
    first = run_fmkit(["audio", "train-classifier", str(recipe), "--set", "data.limit=60"], env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "trained: " in first.stdout and "20 epochs, seed 0" in first.stdout  # the recipe's metric settings
    second = run_fmkit(["audio", "train-classifier", str(recipe), "--set", "data.limit=60"], env=env)
    assert second.returncode == 0 and "cached: " in second.stdout
    acc = [line for line in first.stdout.splitlines() if line.startswith("test accuracy")]
    assert len(acc) == 2 and acc == [line for line in second.stdout.splitlines() if line.startswith("test accuracy")]
    assert acc[1].startswith("test accuracy after mel -> griffin_lim -> mel: ")  # the vocoded ceiling, cached
    path = first.stdout.split("trained: ")[1].split(" (")[0]
    assert path.startswith(str(tmp_path / "cache")) and path.endswith(".safetensors")
    bad = run_fmkit(["audio", "train-classifier", str(recipe), "--set", "data.root=" + str(tmp_path / "nowhere")],
                    env=env)
    assert bad.returncode != 0 and "Free Spoken Digit Dataset is not there" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr


def test_classifier_training_is_deterministic_in_its_seed(synth_fsdd, tmp_path):
    ds = build_fsdd(root=str(synth_fsdd), limit=40)
    a = train_classifier(ds, epochs=2, seed=0, cache=tmp_path / "a", log=lambda *_: None)
    b = train_classifier(ds, epochs=2, seed=0, cache=tmp_path / "b", log=lambda *_: None)
    c = train_classifier(ds, epochs=2, seed=1, cache=tmp_path / "c", log=lambda *_: None)
    assert a.trained and b.trained and a.path.name == b.path.name != c.path.name
    sa, sb, sc = (x.net.state_dict() for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    again = train_classifier(ds, epochs=2, seed=0, cache=tmp_path / "a", log=lambda *_: None)
    assert not again.trained and again.test_accuracy == pytest.approx(a.test_accuracy)
