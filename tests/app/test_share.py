"""Sharing a trained run: ``fmkit export RUN DIR`` writes a self-contained model
folder; ``fmkit sample`` / ``evaluate`` load it, or ``hf://ORG/NAME[@REVISION]`` through
huggingface_hub's cache (offline here, from a cache laid out by the Hub's own conventions); the model
card states only what the run measured; ``fmkit push --dry-run`` lists what would be uploaded.

The run: the toy recipe for 40 steps, checkpoints at 20 and 40, evaluated (w2 and a scatter
picture) at 40 only, so step 20 is a checkpoint nobody measured.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from reliability_helpers import ROOT, Result, cli, squash, subprocess_env
from safetensors.torch import load_file

RUN_SETS = ["trainer.steps=40", "trainer.checkpoint_every=20", "trainer.log_every=10", "trainer.progress=false",
            "trainer.device=cpu", "eval.every=40", "eval.num_samples=200", "solver.steps=10"]
N = "200"  # = eval.num_samples: `fmkit sample -n 200 --seed 0` draws the evaluation's samples
FILES = ["README.md", "fmkit.json", "model.safetensors", "recipe.yaml", "sample.png"]
REPO = "acme/toy-moons"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A trained run (``run``), its step-40 export (``model``) and step-20 export (``model20``)."""
    root = tmp_path_factory.mktemp("share")
    sets = [a for s in RUN_SETS for a in ("--set", s)]
    r = cli("train", ROOT / "recipes" / "toy_moons.yaml", "--out", root / "run", *sets)
    assert r.code == 0, r.text
    r = cli("export", root / "run", root / "model", "--license", "mit", "--pipeline-tag",
            "unconditional-image-generation")
    assert r.code == 0, r.text
    r = cli("export", root / "run", root / "model20", "--checkpoint", "20")
    assert r.code == 0, r.text
    return root


def _sample(source: object, cwd: Path, monkeypatch, *extra: str) -> dict[str, torch.Tensor]:
    """``fmkit sample SOURCE -n 200 --seed 0`` (in-process, in ``cwd``): the samples it wrote."""
    monkeypatch.chdir(cwd)
    r = cli("sample", source, "-n", N, "--seed", "0", "--out", "s", "--overwrite", *extra)
    assert r.code == 0, r.text
    home = Path(source) if Path(source).joinpath("checkpoints").is_dir() else cwd
    return load_file(str(home / "samples" / "s" / "samples.safetensors"))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the folder -------------------------------------------------------------------------------
def test_the_folder_holds_the_ema_weights_recipe_provenance_card_and_picture(work: Path) -> None:
    model, run = work / "model", work / "run"
    assert sorted(p.name for p in model.iterdir()) == FILES
    assert _equal(load_file(str(model / "model.safetensors")),
                  load_file(str(run / "checkpoints" / "step_000000040" / "ema.safetensors")))
    assert (model / "recipe.yaml").read_text() == (run / "recipe.yaml").read_text()
    assert (model / "sample.png").read_bytes() == (run / "samples" / "samples_step0000040.png").read_bytes()
    meta = json.loads((model / "fmkit.json").read_text())
    assert meta["step"] == 40 and meta["weights"] == "ema"
    comps = meta["provenance"]["components"]
    assert comps["models.mlp"]["distribution"] == "fmkit" and comps["models.mlp"]["version"]
    assert meta["provenance"]["torch"] == torch.__version__
    # step 20 was not evaluated, so it has no picture either
    assert sorted(p.name for p in (work / "model20").iterdir()) == [f for f in FILES if f != "sample.png"]


def test_sample_from_the_folder_reproduces_the_runs_samples_bitwise(work: Path, tmp_path: Path, monkeypatch) -> None:
    got = _sample(work / "model", tmp_path, monkeypatch)
    assert _equal(got, load_file(str(work / "run" / "samples" / "samples_step0000040.safetensors")))
    assert not (work / "model" / "samples").exists(), "sampling wrote into the model folder"


def test_evaluate_the_folder_gives_the_runs_metric(work: Path) -> None:
    r = cli("evaluate", work / "model")
    assert r.code == 0, r.text
    w2 = _eval_rows(work / "run", 40)["w2"]
    assert re.search(rf"w2\s*│\s*{w2:.4f}", r.out), r.out


def test_a_model_folder_refuses_checkpoint_and_damage(work: Path, tmp_path: Path) -> None:
    r = cli("sample", work / "model", "-n", "4", "--checkpoint", "20")
    assert r.code == 2 and "a model folder holds one set of weights" in squash(r.err), r.err
    bad = tmp_path / "bad"
    shutil.copytree(work / "model", bad)
    with open(bad / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    r = cli("sample", bad, "-n", "4")
    assert r.code == 2 and "model.safetensors is corrupt or truncated" in squash(r.err), r.err
    r = cli("export", work / "run", work / "model")
    assert r.code == 2 and "already holds an exported model" in squash(r.err) and "--overwrite" in r.err


# -- the card -----------------------------------------------------------------------------------
def _eval_rows(run: Path, step: int) -> dict[str, float]:
    from fmkit.engine.metrics_log import read_metrics

    return {k[len("eval/"):]: v for k, rows in read_metrics(run).items() if k.startswith("eval/")
            for s, v in rows if s == step}


def _card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_the_card_states_metadata_and_only_what_the_run_measured(work: Path) -> None:
    front, body = _card(work / "model")
    assert front["library_name"] == "fmkit" and front["license"] == "mit"
    assert front["pipeline_tag"] == "unconditional-image-generation"
    assert {"fmkit", "flow-matching", "moons"} <= set(front["tags"])
    assert "![samples of the run's evaluation at step 40](sample.png)" in body

    section = body.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    measured = _eval_rows(work / "run", 40)
    assert measured, "the run recorded no evaluation at step 40"
    table = dict(re.findall(r"^\| (\S+) \| ([-\d.e+]+) \|$", section, re.M))
    assert table == {k: f"{v:.4f}" for k, v in measured.items()}, (table, measured)
    # every other number of the section is the protocol's (step, samples, seed, solver steps, NFE,
    # the metric's reference size): none is made up
    protocol = {"40", "200", "0", "10", "2000"}
    prose = re.sub(r"^\|.*\|$", "", section, flags=re.M)
    numbers = set(re.findall(r"(?<![A-Za-z_\d])\d(?:[\d,.]*\d)?", prose))  # not the 2 of "w2"
    assert {n.replace(",", "").rstrip(".") for n in numbers} <= protocol, numbers
    assert "Protocol: 200 samples drawn with seed 0, solver euler, 10 steps (10 function evaluations per " \
           "sample), EMA weights" in squash(section)
    assert "`fmkit evaluate ./model`" in section


def test_the_card_of_an_unmeasured_checkpoint_has_no_metric(work: Path) -> None:
    assert _eval_rows(work / "run", 20) == {}
    front, body = _card(work / "model20")
    section = body.split("## Evaluation", 1)[1].split("\n## ", 1)[0]
    assert "The run recorded no evaluation of these weights" in section
    assert "|" not in section and not re.search(r"\d\.\d", section), section
    assert "pipeline_tag" not in front and front["license"] == "other"
    assert "![" not in body


# -- the Hub ------------------------------------------------------------------------------------
def hub_cache(cache: Path, repo_id: str, commits: dict[str, tuple[Path, list[str]]]) -> None:
    """Lay out ``cache`` as huggingface_hub's download cache does (docs: "Manage the cache"):
    ``models--ORG--NAME/blobs/<etag>`` (a git blob sha1, or the sha256 of an LFS file),
    ``snapshots/<commit>/<file>`` linked to its blob, ``refs/<branch or tag>`` holding the commit.

    Args:
        cache: the cache root (HF_HUB_CACHE).
        repo_id: ORG/NAME.
        commits: commit sha -> (the folder it holds, the refs that point at it).
    """
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for commit, (folder, refs) in commits.items():
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        for f in sorted(folder.iterdir()):
            data = f.read_bytes()
            lfs = f.suffix in (".safetensors", ".png")
            etag = hashlib.sha256(data).hexdigest() if lfs else \
                hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            blob = repo / "blobs" / etag
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            (snap / f.name).symlink_to(Path("..", "..", "blobs", etag))
        for ref in refs:
            (repo / "refs").mkdir(exist_ok=True)
            (repo / "refs" / ref).write_text(commit)


@pytest.fixture(scope="module")
def cache(work: Path) -> Path:
    huggingface_hub = pytest.importorskip("huggingface_hub")
    root = work / "hf-cache"
    sha40, sha20 = hashlib.sha1(b"step 40").hexdigest(), hashlib.sha1(b"step 20").hexdigest()
    hub_cache(root, REPO, {sha40: (work / "model", ["main"]), sha20: (work / "model20", ["v1"])})
    # huggingface_hub's own reader sees a valid cache: the repo, both revisions, their refs and files
    info = huggingface_hub.scan_cache_dir(root)
    assert not info.warnings, info.warnings
    (repo,) = info.repos
    assert repo.repo_id == REPO and repo.repo_type == "model"
    revs = {r.commit_hash: r for r in repo.revisions}
    assert revs[sha40].refs == {"main"} and revs[sha20].refs == {"v1"}
    assert sorted(f.file_name for f in revs[sha40].files) == FILES
    return root


def test_hf_ref_loads_offline_from_the_hub_cache(work: Path, cache: Path, tmp_path: Path, monkeypatch) -> None:
    """A real process with HF_HUB_OFFLINE=1: huggingface_hub resolves refs/main and refs/v1 itself."""
    env = subprocess_env(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp_path / "hf-home"))
    for ref, want in [(f"hf://{REPO}", work / "run" / "samples" / "samples_step0000040.safetensors"),
                      (f"hf://{REPO}@v1", None)]:
        out = tmp_path / ref.rsplit("@", 1)[-1].replace("/", "_")
        out.mkdir()
        r = subprocess.run([sys.executable, "-m", "fmkit", "sample", ref, "-n", N, "--seed", "0", "--out", "s"],
                           cwd=out, env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, r.stdout + r.stderr
        got = load_file(str(out / "samples" / "s" / "samples.safetensors"))
        expected = load_file(str(want)) if want else _sample(work / "run", tmp_path, monkeypatch, "--checkpoint", "20")
        assert _equal(got, expected), ref
        assert "exported step " + ("40" if want else "20") in r.stdout, r.stdout


def test_hf_ref_not_in_the_cache_says_how_to_get_it(cache: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    r = cli("sample", "hf://acme/absent", "-n", "4")
    assert r.code == 2 and "hf://acme/absent is not in the Hugging Face cache" in squash(r.err), r.err
    assert "unset HF_HUB_OFFLINE" in squash(r.err)
    r = cli("sample", f"hf://{REPO}@v9", "-n", "4")
    assert r.code == 2 and "is not in the Hugging Face cache" in squash(r.err), r.err
    r = cli("sample", "hf://acme--x/y", "-n", "4")
    assert r.code == 2 and "is not a Hugging Face repository name" in squash(r.err), r.err


# -- push ---------------------------------------------------------------------------------------
def _listed(r: Result) -> list[str]:
    return sorted(m for m in re.findall(r"^  (\S+)  \(", r.out, re.M))


def test_push_dry_run_lists_what_would_be_uploaded(work: Path) -> None:
    r = cli("push", work / "run", REPO, "--dry-run")
    assert r.code == 0, r.text
    out = " ".join(r.out.split())  # rich wraps long lines
    assert f"would upload step 40 of {work / 'run'} to https://huggingface.co/{REPO}, 5 files:" in out, out
    assert _listed(r) == FILES and f"fmkit sample hf://{REPO}" in out
    r = cli("push", work / "model20", REPO, "--dry-run", "--revision", "v1")
    assert r.code == 0 and _listed(r) == [f for f in FILES if f != "sample.png"], r.text
    assert "(branch v1)" in r.out and f"hf://{REPO}@v1" in r.out
    r = cli("push", work / "run", "not a repo", "--dry-run")
    assert r.code == 2 and "is not a Hugging Face repository name" in squash(r.err)


def test_push_uploads_the_folder_with_upload_folder(work: Path, monkeypatch) -> None:
    """The Hub's network calls are replaced by recorders: what fmkit hands to huggingface_hub."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kw):
        calls.append(("create_repo", {"repo_id": repo_id, **kw}))

    def upload_folder(self, **kw):
        calls.append(("upload_folder", {**kw, "files": sorted(p.name for p in Path(kw["folder_path"]).iterdir())}))
        card = (Path(kw["folder_path"]) / "README.md").read_text()
        calls.append(("card", {"hf": f"fmkit sample hf://{REPO}" in card}))
        return huggingface_hub.CommitInfo(commit_url=f"https://huggingface.co/{REPO}/commit/abc", commit_message="",
                                          commit_description="", oid="abc", pr_url=None)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    r = cli("push", work / "run", REPO, "--private")
    assert r.code == 0, r.text
    assert [c[0] for c in calls] == ["create_repo", "upload_folder", "card"]
    assert calls[0][1] == {"repo_id": REPO, "private": True, "exist_ok": True}
    up = calls[1][1]
    assert up["repo_id"] == REPO and up["files"] == FILES and up["revision"] is None
    assert calls[2][1]["hf"], "the card of a pushed run shows how to load it from the Hub"
    assert not Path(up["folder_path"]).exists(), "the temporary export was left behind"


def test_hf_ref_without_huggingface_hub_says_how_to_install_it(work: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed: importing it fails
    r = cli("sample", f"hf://{REPO}", "-n", "4")
    assert r.code == 2 and "needs the package huggingface_hub, which is not installed" in squash(r.err), r.err
    assert "pip install 'fmkit[hub]'" in r.err
    r = cli("push", work / "run", REPO)
    assert r.code == 2 and "fmkit push needs the package huggingface_hub" in squash(r.err), r.err
    assert cli("push", work / "run", REPO, "--dry-run").code == 0  # a dry run does not need it
