"""A third-party vocoder, registered through the audio plugin's ``register_vocoders`` hook, is selectable
from a recipe: in-process on a fresh registry, and as a tiny installed distribution (a dist-info with
an entry point in group ``fmkit`` on the path of a fresh ``fmkit train`` process). fmkit's registry
serves the plugin-declared kind as its own: hints, options, listing and provenance."""

from __future__ import annotations

import importlib
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from audio_testlib import run_fmkit

from fmkit.plugin import RecipeError, RegistryError, hookimpl
from fmkit.testing import fresh_registry, run_cli

import fmkit_audio.plugin as audio_plugin
from fmkit_audio.mel import FrontEndOptions
from fmkit_audio.vocoders import build_vocoder
from fmkit_audio.writers import WavWriter

# The third-party plugin's source: a sine-bank vocoder (one oscillator per mel band at its centre
# frequency, amplitudes from exp(log-mel) interpolated between frames); nothing of it is in fmkit_audio.
PLUGIN_SRC = '''
"""fmkit-sinevoc: a sine-bank vocoder for fmkit-audio (test package)."""
import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import hookimpl


class SineBankOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gain: float = Field(0.5, gt=0.0, le=1.0, description="peak of the output")


class SineBank:
    def __init__(self, gain=0.5, *, front_end):
        self.gain, self.fe = gain, front_end
        lo = 2595 * math.log10(1 + front_end.f_min / 700)
        hi = 2595 * math.log10(1 + (front_end.f_max or front_end.sample_rate / 2) / 700)
        mels = torch.linspace(lo, hi, front_end.n_mels + 2)[1:-1]
        self.freqs = 700 * (10 ** (mels / 2595) - 1)

    def __call__(self, log_mel):
        b, m, t = log_mel.shape
        hop, sr = self.fe.hop_length, self.fe.sample_rate
        n = (t - 1) * hop
        amp = torch.nn.functional.interpolate(log_mel.exp(), size=n, mode="linear", align_corners=True)
        phase = 2 * math.pi * self.freqs[:, None] * torch.arange(n)[None] / sr
        wav = (amp * torch.sin(phase)[None]).sum(1)
        return self.gain * wav / wav.abs().amax(-1, keepdim=True).clamp_min(1e-9)


@hookimpl
def register_vocoders(register):
    register("sine_bank", SineBank, options=SineBankOptions, description="sine bank at the mel centre frequencies")
'''


def sine_module() -> types.ModuleType:
    mod = types.ModuleType("fmkit_sinevoc_inproc")
    exec(compile(PLUGIN_SRC, "fmkit_sinevoc_inproc.py", "exec"), mod.__dict__)
    return mod


FE = FrontEndOptions(sample_rate=8000, n_fft=512, hop_length=128, n_mels=64, f_max=4000.0)


def test_a_plugin_on_a_fresh_registry_adds_a_vocoder():
    reg = fresh_registry(audio_plugin, sine_module())
    assert "vocoders" in reg.kinds()
    table = reg.entries("vocoders")
    assert {"griffin_lim", "sine_bank"} <= set(table)
    assert table["sine_bank"].plugin != table["griffin_lim"].plugin
    voc = build_vocoder({"name": "sine_bank", "gain": 0.25}, FE, registry=reg)
    wav = voc(torch.randn(2, 64, 9))
    assert wav.shape == (2, 8 * 128) and wav.abs().amax(-1).allclose(torch.tensor(0.25))
    with pytest.raises(RecipeError) as e:
        build_vocoder({"name": "sine_bank", "gain": 2.0}, FE, registry=reg)
    assert "gain" in str(e.value)
    with pytest.raises(RegistryError) as e:
        build_vocoder("sine_bnk", FE, registry=reg)
    assert "did you mean 'sine_bank'" in e.value.fix
    # without the third-party plugin the name is unknown
    with pytest.raises(RegistryError, match="unknown vocoder 'sine_bank'"):
        build_vocoder("sine_bank", FE, registry=fresh_registry(audio_plugin))


def test_fmkit_plugins_lists_the_vocoders_with_their_plugins():
    reg = fresh_registry(audio_plugin, sine_module())
    r = run_cli("plugins", "--json", registry=reg)
    assert r.code == 0, r.err
    rows = {c["name"]: c for c in json.loads(r.out)["components"] if c["kind"] == "vocoder"}
    assert rows["griffin_lim"]["plugin"] == "fmkit_audio.plugin"
    assert rows["sine_bank"]["plugin"] == "fmkit_sinevoc_inproc"
    r = run_cli("plugins", "--kind", "vocoders", "--options", registry=reg)
    assert r.code == 0 and "griffin_lim" in r.out and "n_iter" in r.out and "sine_bank" in r.out, r.out + r.err


def test_the_writer_uses_the_registry_it_is_given(synth_fsdd, tmp_path):
    from fmkit_audio.data import build_fsdd

    ds = build_fsdd(root=str(synth_fsdd), limit=20)
    reg = fresh_registry(audio_plugin, sine_module())
    w = WavWriter(vocoder={"name": "sine_bank", "gain": 0.3}, num=2, data_info=ds.info, registry=reg)
    paths = [p for p in w(ds.template(2), tmp_path, ds, 0) if p.suffix == ".wav"]
    import soundfile as sf

    assert len(paths) == 2 and w.report["files"][paths[0].name]["peak_in"] == pytest.approx(0.3)  # the sine bank's
    assert abs(float(abs(sf.read(str(paths[0]))[0]).max()) - 0.95) < 1e-3  # written at the data's level


def test_two_plugins_registering_one_vocoder_name_is_an_error():
    class Dup:
        @hookimpl
        def register_vocoders(self, register):
            register("griffin_lim", lambda **k: None)

    reg = fresh_registry(audio_plugin, Dup())
    with pytest.raises(RegistryError, match="vocoder 'griffin_lim' is registered twice"):
        reg.entries("vocoders")


def install_tiny_dist(site: Path) -> Path:
    """What `pip install fmkit-sinevoc` would leave: the package and a dist-info naming its entry point."""
    pkg = site / "fmkit_sinevoc"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(PLUGIN_SRC)
    info = site / "fmkit_sinevoc-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fmkit-sinevoc\nVersion: 0.1.0\n"
                                   "Requires-Dist: fmkit-audio\n")
    (info / "entry_points.txt").write_text("[fmkit]\nsinevoc = fmkit_sinevoc.plugin\n")
    (info / "top_level.txt").write_text("fmkit_sinevoc\n")
    (info / "RECORD").write_text("")
    return site


def tiny_recipe(root: Path, writers: list, metrics: list | None = None, steps: int = 2) -> dict:
    return {
        "name": "audio_tiny", "seed": 0,
        "data": {"name": "fsdd", "root": str(root), "limit": 20},
        "model": {"name": "mel_unet", "channels": [16, 32], "res_blocks": 1, "attn_blocks": 1, "mid_blocks": 1,
                  "heads": 2, "emb_dim": 32},
        "path": {"name": "condot"}, "solver": {"name": "euler", "steps": 4},
        "trainer": {"steps": steps, "batch_size": 8, "device": "cpu", "cpu_threads": 1, "progress": False,
                    "checkpoint_every": 1000, "cond_dropout": 0.2, "log_every": 1},
        "eval": {"every": 0, "num_samples": 4, "batch_size": 4, "guidance_scale": 2.0,
                 "metrics": metrics or [], "writers": writers},
    }


def test_an_installed_vocoder_plugin_is_selectable_from_a_recipe(synth_fsdd, tmp_path):
    site = install_tiny_dist(tmp_path / "site")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(synth_fsdd, [
        {"name": "wav", "vocoder": {"name": "sine_bank", "gain": 0.4}, "num": 2}, {"name": "mel_safetensors"}])))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    listed = run_fmkit(["audio", "vocoders"], env=env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines() if line.strip()}
    assert rows.get("sine_bank") == "sinevoc" and rows.get("griffin_lim") == "audio", listed.stdout
    listed = run_fmkit(["plugins", "--json"], env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {c["name"]: c["plugin"] for c in json.loads(listed.stdout)["components"] if c["kind"] == "vocoder"}
    assert rows == {"griffin_lim": "audio", "sine_bank": "sinevoc"}, rows
    r = run_fmkit(["train", str(recipe), "--out", str(tmp_path / "run")], env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())["components"]
    assert prov["vocoders.sine_bank"] == {"plugin": "sinevoc", "distribution": "fmkit-sinevoc", "version": "0.1.0"}
    assert prov["writers.wav"]["plugin"] == "audio"
    resolved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert resolved["eval"]["writers"][0]["vocoder"] == {"name": "sine_bank", "gain": 0.4}  # defaults filled in
    out = tmp_path / "run" / "samples"
    wavs = sorted(out.glob("step*_*.wav"))
    assert len(wavs) == 2
    # the WAVs are the sine bank's rendering of the samples the run wrote, at the data's level (16-bit rounding aside)
    import soundfile as sf
    from safetensors.torch import load_file

    from fmkit_audio.levels import at_level

    sys.path.insert(0, str(site))
    try:
        SineBank = importlib.import_module("fmkit_sinevoc.plugin").SineBank
    finally:
        sys.path.remove(str(site))
    mels = load_file(str(next(out.glob("mels_step*.safetensors"))))
    voc = SineBank(gain=0.4, front_end=FE)
    peak = json.loads((out / "mel_stats.json").read_text())["peak_level"]
    for i, p in enumerate(wavs):
        n = int(mels["mask"][i].sum())
        expect = at_level(voc(mels["log_mel"][i:i + 1, :, :n])[0], peak)[0]
        got = torch.from_numpy(sf.read(str(p), dtype="float32")[0])
        assert got.shape == expect.shape
        torch.testing.assert_close(got, expect, atol=2 / 32768, rtol=0)
    # a misspelt vocoder fails before any training step, naming the installed one
    recipe.write_text(yaml.safe_dump(tiny_recipe(synth_fsdd, [{"name": "wav", "vocoder": "sine_bnk"}])))
    r = run_fmkit(["train", str(recipe), "--out", str(tmp_path / "run2")], env=env)
    assert r.returncode != 0 and "unknown vocoder 'sine_bnk'" in r.stderr + r.stdout and "sine_bank" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "run2").glob("checkpoints/step_*"))
