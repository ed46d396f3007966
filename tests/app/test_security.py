"""Security: loading never runs code, recipes name only registered components, and nothing a recipe,
a checkpoint or the command line says can make fmkit write outside the run directory."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import fmkit.app.registry
import pytest
import torch
from fmkit.app.recipe import apply_overrides, parse_yaml, validate
from fmkit.app.run import safe_output_path
from fmkit.engine import checkpoint as ck
from fmkit.errors import CheckpointError, OutputError, RecipeError
from reliability_helpers import ROOT, TINY, cli, fresh_registry, squash


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: proof that code executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fmkit.app.registry, "_DEFAULT", fresh_registry())
    yield


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _trained_run(name: str = "run") -> Path:
    Path("tiny.yaml").write_text(TINY)
    r = cli("train", "tiny.yaml", "--out", name)
    assert r.code == 0, r.text
    return Path(name)


def _plant(ckpt_dir: Path, name: str, data: bytes) -> None:
    """Replace a file of a checkpoint and make the manifest agree, as an attacker would."""
    (ckpt_dir / name).write_bytes(data)
    man = json.loads((ckpt_dir / ck.MANIFEST).read_text())
    man["files"][name] = _sha(ckpt_dir / name)
    (ckpt_dir / ck.MANIFEST).write_text(json.dumps(man))


# -- nothing is unpickled ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["torch_save", "raw_pickle"])
def test_pickle_disguised_as_safetensors_in_a_valid_checkpoint_is_refused(tmp_path, kind):
    """A checkpoint directory whose manifest checksums are all correct, but whose model.safetensors
    is a pickle: loading it (library and `fmkit sample`) refuses, and the payload never runs."""
    run = _trained_run()
    last = ck.find_latest(run / "checkpoints")
    marker = tmp_path / "PWNED"
    if kind == "torch_save":
        torch.save({"net.0.weight": Payload(marker)}, tmp_path / "evil.bin")
        data = (tmp_path / "evil.bin").read_bytes()
    else:
        data = pickle.dumps({"net.0.weight": Payload(marker)})
    _plant(last, "model.safetensors", data)
    ck.verify(last)  # checksums agree: only the format check stands between us and the payload
    with pytest.raises(CheckpointError) as ei:
        ck.load_checkpoint(last)
    assert "model.safetensors is not a valid safetensors file" in str(ei.value)
    r = cli("sample", "run", "-c", str(ck._step_of(last)), "-n", "4")  # that checkpoint, by name
    assert r.code == 2 and "Traceback" not in r.text
    assert "model.safetensors is not a valid safetensors file" in squash(r.err)
    r = cli("train", "--resume", "run", "--set", "trainer.steps=9")  # the newest that loads: the older one
    assert r.code == 0 and f"skipping checkpoint {last.name}" in squash(r.err) and "not a valid safetensors file" \
        in squash(r.err), r.text
    assert not marker.exists()


def test_meta_json_is_data_not_code(tmp_path):
    """meta.json with a pickle-ish or YAML-tag payload is just a string/JSON error, never executed."""
    run = _trained_run()
    last = ck.find_latest(run / "checkpoints")
    _plant(last, "meta.json", b"!!python/object/apply:os.system ['touch PWNED']")
    with pytest.raises(CheckpointError, match="meta.json is corrupt"):
        ck.load_checkpoint(last)
    r = cli("sample", "run", "-c", str(ck._step_of(last)), "-n", "4")
    assert r.code == 2 and "meta.json is corrupt" in r.err and "Traceback" not in r.text
    r = cli("sample", "run", "-n", "4")  # the newest intact one instead, with a note
    assert r.code == 0 and f"skipping checkpoint {last.name}" in squash(r.err), r.text
    assert not (tmp_path / "PWNED").exists()


def test_core_never_calls_an_unsafe_loader():
    """No torch.load without weights_only=True, no pickle / yaml.load / eval / exec in the core."""
    src = ROOT / "core" / "fmkit"
    for f in src.rglob("*.py"):
        text = f.read_text()
        for m in re.finditer(r"torch\.load\((.*)", text):
            assert "weights_only=True" in m.group(1), f"{f}: {m.group(0)}"
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", text, re.MULTILINE), f
        assert not re.search(r"yaml\.(load|unsafe_load|full_load)\(", text), f
        assert not re.search(r"(?<![\w.])(eval|exec)\(", text), f


# -- recipes name registered components only ----------------------------------------------------
@pytest.mark.parametrize("name", ["os.system", "subprocess.Popen", "fmkit.app.builtin.plugin:register_models", "builtins.eval",
                                  "__import__", "torch.load"])
def test_import_paths_are_not_component_names(name):
    data = {"data": {"name": "moons"}, "model": {"name": name}}
    with pytest.raises(RecipeError, match=f"unknown model {re.escape(repr(name))}"):
        validate(data)


def test_import_path_through_set_is_refused(tmp_path):
    Path("tiny.yaml").write_text(TINY)
    r = cli("train", "tiny.yaml", "--set", "model.name=os.system", "--out", "run")
    assert r.code == 2 and "unknown model 'os.system'" in r.err and "Traceback" not in r.text
    assert not Path("run").exists()


@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['touch PWNED']",
                                 "!!python/name:os.system", "!!python/object/new:subprocess.Popen [['touch', 'PWNED']]"])
def test_yaml_python_tags_are_refused(tmp_path, tag):
    with pytest.raises(RecipeError, match="not valid YAML"):
        parse_yaml(f"data: {{name: moons}}\nmodel: {tag}\n")
    Path("r.yaml").write_text(f"data: {{name: moons}}\nmodel: {tag}\n")
    r = cli("train", "r.yaml")
    assert r.code == 2 and "not valid YAML" in r.err
    # an override value is parsed the same safe way: it stays a string, then is no known model
    d = apply_overrides({"data": {"name": "moons"}, "model": {"name": "mlp"}}, [f"model={tag}"])
    assert isinstance(d["model"], str)
    assert not (tmp_path / "PWNED").exists()


# -- nothing is written outside the run directory ----------------------------------------------
@pytest.mark.parametrize("name", ["../x", "../../x", "/tmp/x", "a/../../x", "..", "a/b/../../../x"])
def test_safe_output_path_refuses_escapes(tmp_path, name):
    with pytest.raises(OutputError, match="would write outside"):
        safe_output_path(tmp_path / "run" / "samples", name)


def test_safe_output_path_refuses_links_out(tmp_path):
    base = tmp_path / "run" / "samples"
    base.mkdir(parents=True)
    (base / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(OutputError):
        safe_output_path(base, "link/x")


@pytest.mark.parametrize("name", ["mine", "a/b", "./c", "d/../e"])
def test_safe_output_path_allows_names_inside(tmp_path, name):
    base = tmp_path / "run" / "samples"
    p = safe_output_path(base, name)
    assert base.resolve() in p.parents


def test_sample_out_cannot_escape(tmp_path):
    _trained_run()
    for out in ("../../x", "../x", str(tmp_path / "abs")):
        r = cli("sample", "run", "-n", "4", "--out", out)
        assert r.code == 2 and "would write outside" in r.err and "Traceback" not in r.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tiny.yaml"]
    assert not (tmp_path / "run" / "x").exists()


@pytest.mark.parametrize("name", ["../evil", "a/b", "/abs", ".hidden", "..", "x" * 101, "a\nb"])
def test_run_name_cannot_be_a_path(tmp_path, name):
    Path("r.yaml").write_text(f"name: {json.dumps(name)}\n" + TINY.split("\n", 1)[1])
    r = cli("train", "r.yaml")
    assert r.code == 2 and "name: String should match pattern" in squash(r.err)
    assert not Path("runs").exists() and not (tmp_path.parent / "evil").exists()


@pytest.mark.parametrize("bad", ["../x", "../../etc/passwd", "/etc/passwd", ".hidden", "sub/model.safetensors",
                                 "..\\x"])
def test_manifest_naming_files_outside_is_refused(tmp_path, bad):
    run = _trained_run()
    last = ck.find_latest(run / "checkpoints")
    man = json.loads((last / ck.MANIFEST).read_text())
    man["files"][bad] = "0" * 64
    (last / ck.MANIFEST).write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match="manifest names an unsafe file"):
        ck.load_checkpoint(last)
    with pytest.raises(CheckpointError, match="manifest names an unsafe file"):
        ck.verify(last)


def test_latest_pointer_cannot_lead_outside(tmp_path):
    run = _trained_run()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ck.MANIFEST).write_text(json.dumps({"format": 1, "step": 99, "files": {}}))
    (run / "checkpoints" / ck.LATEST).write_text("../../outside\n")
    assert ck.find_latest(run / "checkpoints").parent == run / "checkpoints"
