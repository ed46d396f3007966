"""Sample quality and real-time factor of a trained audio run (the issue-21 CPU/GPU figures).

    python bench/audio_quality.py RUN --steps 32 --guidance 2.0 -n 300 --out bench/results/audio_cpu_quality

Guided class-conditional samples (euler, STEPS solver evaluations, each a conditional and an
unconditional network pass under classifier-free guidance) scored by the audio_digits metric as the
recipe configures it (the plugin's classifier on the samples after the vocoder, digit_acc_vocoded, and on
their mels, digit_acc_mel, with the real test clips' accuracy after the same round trip as the ceiling;
Fréchet distance with the real test-vs-train floor at the same N, inception score, mel statistics), with
the accuracy per digit of both. Real-time factor = seconds
of audio per second of compute, the flow and Griffin-Lim timed apart (one untimed warm-up chunk
first; GPU work synchronised before each clock read). Writes quality.json, one WAV per digit
(digit<d>.wav, 16-bit) and their spectrograms (mels.png) under --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from fmkit.app.run import build_components, load_run_recipe
from fmkit.engine.checkpoint import load_checkpoint
from fmkit.engine.evaluation import sample_in_chunks
from fmkit.engine.train_state import load_model_state
from fmkit.flow.guidance import with_guidance
from fmkit.flow.solvers import FixedStepSolver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--steps", type=int, default=32, help="euler steps (solver evaluations)")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("-n", type=int, default=300, help="samples scored (FSDD's test split has 300 clips)")
    ap.add_argument("--chunk", type=int, default=100, help="samples generated per solver call")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on a CPU (default: the recipe's)")
    ap.add_argument("--gl-iter", type=int, default=None, help="Griffin-Lim iterations (default: the vocoder's 64)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    from fmkit_audio.levels import at_level, data_peak
    from fmkit_audio.metrics import AudioDigitsMetric
    from fmkit_audio.roundtrip import heard
    from fmkit_audio.mel import FrontEndOptions
    from fmkit_audio.rtf import RealTimeFactor, audio_seconds, synchronize, time_vocoder
    from fmkit_audio.vocoders import build_vocoder
    from fmkit_audio.writers import MelPngWriter, denormalised

    rec = load_run_recipe(a.run, [])
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(a.threads or rec.trainer.cpu_threads or torch.get_num_threads())
    comps = build_components(rec, with_eval=False)
    ck = a.run / "checkpoints" / (a.run / "checkpoints" / "latest").read_text().strip()
    data = load_checkpoint(ck)
    load_model_state(comps.model, data.tensors["ema"] if "ema" in data.tensors else data.tensors["model"], str(ck))
    model = comps.model.to(device).eval()
    ds = comps.dataset
    guided = with_guidance(model, a.guidance, ds.info.null_class)
    solver = FixedStepSolver("euler", a.steps)
    fe = FrontEndOptions(**ds.info.meta["front_end"])
    a.out.mkdir(parents=True, exist_ok=True)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch threads, no GPU")
    res: dict = {"run": str(a.run), "checkpoint": ck.name, "step": int(data.meta["step"]),
                 "stopped": (data.meta.get("stopped") or {}).get("message"), "git": rev,
                 "hardware": hw, "solver": f"euler {a.steps} steps", "nfe": a.steps,
                 "network_passes_per_sample": 2 * a.steps, "guidance_scale": a.guidance, "n": a.n,
                 "command": "python bench/audio_quality.py " + " ".join(
                     [str(a.run), f"--steps {a.steps}", f"--guidance {a.guidance}", f"-n {a.n}",
                      f"--chunk {a.chunk}", f"--device {a.device}"])}
    # warm-up (kernels, allocator, threads), not timed
    sample_in_chunks(guided, comps.path, comps.source, solver, ds, min(a.chunk, a.n), a.chunk, device, 123)
    synchronize(device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    samples = sample_in_chunks(guided, comps.path, comps.source, solver, ds, a.n, a.chunk, device, 0)
    synchronize(device)
    flow_s = time.perf_counter() - t0
    secs = audio_seconds(samples["mask"], fe.hop_length, fe.sample_rate)

    t0 = time.perf_counter()
    metric = AudioDigitsMetric(**_metric_options(rec))
    res.update(metric(samples, ds))
    res["metric_s"] = time.perf_counter() - t0
    cond = samples["cond"]
    clf, mel = metric.classifier(ds), {"mel": samples["mel"].float(), "mask": samples["mask"]}
    heard_as = {"mel": mel} | ({"vocoded": heard(mel, ds, metric.vocoder(ds))} if metric.vocoder(ds) else {})
    for kind, state in heard_as.items():
        pred = clf.run(state)[0].argmax(1)
        res[f"acc_per_digit_{kind}"] = {str(d): round(float((pred[cond == d] == d).float().mean()), 4)
                                        for d in range(ds.info.num_cond_classes) if (cond == d).any()}

    voc = build_vocoder({"name": "griffin_lim", **({"n_iter": a.gl_iter} if a.gl_iter else {})}, fe)
    mels = denormalised(samples, ds)
    wavs, voc_s = time_vocoder(voc, mels)
    rtf = RealTimeFactor(secs, flow_s, voc_s, a.n, a.steps)
    res.update({k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in rtf.as_dict().items()})  # 6 significant digits: short runs last milliseconds
    res["vocoder"] = f"griffin_lim (torchaudio InverseMelScale + GriffinLim, {a.gl_iter or 64} iterations), CPU"

    # one WAV and one spectrogram per digit (the first sample of each): small files for bench/results
    import soundfile as sf

    picks = [int((cond == d).nonzero()[0]) for d in range(ds.info.num_cond_classes) if (cond == d).any()]
    size = 0
    for i in picks:
        p = a.out / f"digit{int(cond[i])}.wav"
        sf.write(str(p), at_level(wavs[i].cpu(), data_peak(ds.info.meta))[0].numpy(), fe.sample_rate, subtype="PCM_16")
        size += p.stat().st_size
    res["wav_bytes"] = size
    sub = {k: v[picks] for k, v in samples.items()}
    (png,) = MelPngWriter(num=len(picks))(sub, a.out, ds, res["step"])
    png.replace(a.out / "mels.png")
    (a.out / "quality.json").write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


def _metric_options(rec) -> dict:
    spec = next((m.spec() for m in rec.eval.metrics if m.name == "audio_digits"), {})
    return {k: v for k, v in spec.items() if k != "name"}


if __name__ == "__main__":
    main()
