"""Few-step generation: reflow pairs on disk, the pairs dataset and the given coupling,
flows trained on pairs, trainer.init_from, and `fmkit reflow` (resumable after SIGINT) on the toy recipe."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import fmkit
import pytest
import torch
from fmkit import MLP
from fmkit.app.builtin import pairs as P
from fmkit.app.reflow import draw_pairs, write_pairs
from fmkit.errors import DataError, OutputError
from fmkit.flow.data import DataInfo, Dataset, FieldInfo
from fmkit.flow.paths import StatePath
from fmkit.flow.sources import GaussianSource, StateSource
from fmkit.flow.state import X0
from reliability_helpers import cli, squash, subprocess_env
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


class Blobs(Dataset):
    """Variable-size point sets (2 to 5 points in 3-D) with a class label: padding, masks and conditions."""

    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(3)
        self.sizes = torch.randint(2, 6, (n,), generator=g)
        self.pts = [torch.randn(int(k), 3, generator=g) for k in self.sizes]
        self.labels = torch.randint(0, 4, (n,), generator=g)
        self.info = DataInfo({"pos": FieldInfo((None, 3))}, num_cond_classes=4, has_mask=True)

    def __len__(self) -> int:
        return len(self.pts)

    def __getitem__(self, i: int):
        return {"pos": self.pts[i], "cond": self.labels[i]}

    def collate(self, items: Sequence[dict]):
        n = max(it["pos"].shape[0] for it in items)
        pos = torch.zeros(len(items), n, 3)
        mask = torch.zeros(len(items), n, dtype=torch.bool)
        for j, it in enumerate(items):
            k = it["pos"].shape[0]
            pos[j, :k], mask[j, :k] = it["pos"], True
        return {"pos": pos, "mask": mask, "cond": torch.stack([it["cond"] for it in items])}


class Shrink(torch.nn.Module):
    """A stand-in teacher: velocity -x scaled by the label (uses the mask and cond the solver passes)."""

    def forward(self, x_t, t, cond=None):
        scale = 1.0 + cond.float()[:, None, None]
        return {"pos": -x_t["pos"] * scale * x_t["mask"][..., None]}


def condot() -> StatePath:
    return StatePath(fmkit.AffinePath(fmkit.CondOTScheduler()))


def test_pairs_round_trip_bitwise_with_masks_and_conditions(tmp_path):
    ds = Blobs()
    src = StateSource(GaussianSource())
    solver = fmkit.FixedStepSolver("euler", 3)
    res = write_pairs(tmp_path / "p", Shrink(), condot(), src, solver, ds, 50, seed=7, shard_size=16, chunk_size=8,
                      progress=False)
    assert (res.num_pairs, res.shards, res.shards_written, res.nfe_per_pair) == (50, 4, 4, 3)
    man = json.loads((tmp_path / "p" / P.MANIFEST).read_text())
    assert man["complete"] and [s["start"] for s in man["shards"]] == [0, 16, 32, 48]
    assert man["solver"] == {"class": "FixedStepSolver", "method": "euler", "steps": 3}
    assert man["data_info"]["fields"]["pos"]["shape"] == [None, 3] and man["data_info"]["num_cond_classes"] == 4
    # each shard on disk is bit for bit what the same random stream draws again
    from fmkit.app.reflow import REFLOW_STREAM
    from fmkit.engine.distributed import fold_seed, seed_generators

    for k, entry in enumerate(man["shards"]):
        seed = fold_seed(7, REFLOW_STREAM, k)
        seed_generators(seed, torch.device("cpu"))
        x0, x1 = draw_pairs(Shrink(), condot(), src, solver, ds, seed % (2**31), entry["count"], 8,
                            torch.device("cpu"))
        stored = load_file(str(tmp_path / "p" / entry["file"]))
        assert set(stored) == {"x0.pos", "x1.pos", "mask", "cond"}
        for key, v in P.pack(x0, x1).items():
            assert stored[key].dtype == v.dtype and torch.equal(stored[key], v), (k, key)
        # the pairs are the teacher's: masked source draws, x1 its Euler solve, padding zero on both sides
        m = stored["mask"][..., None]
        assert torch.equal(stored["x0.pos"] * ~m, torch.zeros_like(stored["x0.pos"]))
        assert torch.equal(stored["x1.pos"] * ~m, torch.zeros_like(stored["x1.pos"]))
    # the dataset serves every pair with its mask, condition and x0; shards of other sizes are padded
    data = P.PairsDataset(tmp_path / "p")
    assert len(data) == 50 and data.info == ds.info
    n = data.x1["pos"].shape[1]
    at = 0
    for entry in man["shards"]:
        stored = load_file(str(tmp_path / "p" / entry["file"]))
        sl = slice(at, at + entry["count"])
        pad = n - stored["mask"].shape[1]
        assert torch.equal(data.x1["mask"][sl], torch.nn.functional.pad(stored["mask"], [0, pad]))
        assert torch.equal(data.x1["cond"][sl], stored["cond"])
        assert torch.equal(data.x0["pos"][sl], torch.nn.functional.pad(stored["x0.pos"], [0, 0, 0, pad]))
        assert torch.equal(data.x1["pos"][sl], torch.nn.functional.pad(stored["x1.pos"], [0, 0, 0, pad]))
        at += entry["count"]
    batch = data.get_batch([3, 17, 40])
    assert set(batch) == {"pos", "mask", "cond", X0} and torch.equal(batch[X0]["pos"], data.x0["pos"][[3, 17, 40]])
    assert X0 not in data.template(4) and X0 not in data.reference(4)


def test_pairs_round_trip_of_a_mapping_condition_and_save_pairs(tmp_path):
    x0 = {"x": torch.randn(10, 2, dtype=torch.float64), "tok": torch.randint(0, 5, (10, 4))}
    x1 = {"x": torch.randn(10, 2, dtype=torch.float64), "tok": torch.randint(0, 5, (10, 4)),
          "cond": {"label": torch.arange(10), "prop": torch.rand(10, 3)}}
    info = DataInfo({"x": FieldInfo((2,)), "tok": FieldInfo((4,), 5)})
    P.save_pairs(tmp_path / "s", x0, x1, info, shard_size=4)
    got0, got1, man = P.load_pairs(tmp_path / "s")
    assert man["num_pairs"] == 10 and len(man["shards"]) == 3
    for k in x0:
        assert got0[k].dtype == x0[k].dtype and torch.equal(got0[k], x0[k])
    for k in ("x", "tok"):
        assert torch.equal(got1[k], x1[k])
    assert all(torch.equal(got1["cond"][k], x1["cond"][k]) for k in x1["cond"])
    with pytest.raises(OutputError, match="not empty"):
        P.save_pairs(tmp_path / "s", x0, x1, info)
    # a damaged shard is named, not read
    shard = tmp_path / "s" / P.shard_name(1)
    shard.write_bytes(shard.read_bytes()[:-3] + b"abc")
    with pytest.raises(DataError, match="shard-00001.safetensors is corrupt"):
        P.PairsDataset(tmp_path / "s")


def test_given_keeps_the_stored_pairs_and_draws_nothing(tmp_path):
    x0 = {"x": torch.randn(32, 2)}
    x1 = {"x": torch.randn(32, 2), "cond": torch.arange(32) % 3}
    P.save_pairs(tmp_path / "g", x0, x1, DataInfo({"x": FieldInfo((2,))}, num_cond_classes=3))
    data = P.PairsDataset(tmp_path / "g")
    idx = [5, 0, 31, 7]
    batch = data.get_batch(idx)

    class NoSource(StateSource):
        def sample(self, like):
            raise AssertionError("the given coupling must not draw from the source")

    from fmkit.flow.couplings import draw_and_pair

    p0, p1 = draw_and_pair(NoSource({}), fmkit.GivenCoupling(), batch)
    assert torch.equal(p0["x"], x0["x"][idx]) and torch.equal(p1["x"], x1["x"][idx])
    assert torch.equal(p0["cond"], x1["cond"][idx]) and torch.equal(p1["cond"], x1["cond"][idx])
    assert X0 not in p1
    # the trainer's step regresses exactly x1 - x0 of the stored pairs (condot path, any t)
    tr = fmkit.Trainer(MLP(2, hidden=8, depth=1, time_dim=4), data, coupling=fmkit.GivenCoupling(),
                       source=NoSource({}), options={"steps": 1, "batch_size": 4, "device": "cpu", "progress": False})
    seen = {}
    real = tr.path.sample

    def spy(a, b, t):
        seen["x0"], seen["x1"] = a["x"], b["x"]
        return real(a, b, t)

    tr.path.sample = spy
    tr.loss(batch)
    assert torch.equal(seen["x0"], x0["x"][idx]) and torch.equal(seen["x1"], x1["x"][idx])
    # data without stored pairs: said what to do
    with pytest.raises(DataError, match="no 'x0' entry") as exc:
        draw_and_pair(NoSource({}), fmkit.GivenCoupling(), {"x": torch.randn(4, 2)})
    assert "data: {name: pairs" in exc.value.render()


def _train_on_pairs(tmp_path: Path, x0: torch.Tensor, x1: torch.Tensor, name: str) -> torch.nn.Module:
    P.save_pairs(tmp_path / name, {"x": x0}, {"x": x1}, DataInfo({"x": FieldInfo((2,))}))
    torch.manual_seed(0)
    tr = fmkit.Trainer(MLP(2, hidden=64, depth=2, time_dim=16), P.PairsDataset(tmp_path / name),
                       coupling=fmkit.GivenCoupling(),
                       options={"steps": 1500, "batch_size": 256, "lr": 3e-3, "device": "cpu", "progress": False,
                                "ema_decay": None, "cpu_threads": 1})
    return tr.fit().model.eval()


def _solve(model: torch.nn.Module, x0: torch.Tensor, steps: int) -> torch.Tensor:
    src = StateSource(GaussianSource())
    src.sample = lambda like: {"x": x0.clone()}  # type: ignore[method-assign]
    return fmkit.generate(model, condot(), src, fmkit.FixedStepSolver("euler", steps), {"x": x0}).x["x"]


def test_a_flow_trained_on_pairs_of_a_straight_map_is_straight(tmp_path):
    """Pairs x1 = A x0 + b (a linear map of Gaussians): every path is a line, and the flow fitted to them
    too: one Euler step lands where 100 steps do. The same flow fitted to independent pairs of the same
    marginals curves (the control: the test can fail)."""
    g = torch.Generator().manual_seed(1)
    a = torch.tensor([[1.5, 0.4], [-0.3, 0.8]])
    b = torch.tensor([2.0, -1.0])
    x0 = torch.randn(20000, 2, generator=g)
    x1 = x0 @ a.T + b
    straight = _train_on_pairs(tmp_path, x0, x1, "straight")
    shuffled = _train_on_pairs(tmp_path, x0, x1[torch.randperm(20000, generator=g)], "shuffled")
    z = torch.randn(2000, 2, generator=g)
    with torch.no_grad():
        gap = (_solve(straight, z, 1) - _solve(straight, z, 100)).norm(dim=1).mean().item()
        gap_ind = (_solve(shuffled, z, 1) - _solve(shuffled, z, 100)).norm(dim=1).mean().item()
        err = (_solve(straight, z, 1) - (z @ a.T + b)).norm(dim=1).mean().item()
    scale = (x1 - x0).norm(dim=1).mean().item()  # 2.24: the typical distance travelled
    assert gap < 0.05 * scale, (gap, scale)  # measured (2-core CPU): 0.017; independent pairs: 1.42
    assert err < 0.05 * scale, err  # one step is the map itself (measured: 0.017)
    assert gap_ind > 5 * gap, (gap_ind, gap)


def _toy_run(tmp_path: Path, name: str, hidden: int = 16, steps: int = 30) -> Path:
    r = cli("train", ROOT / "recipes" / "toy_moons.yaml", "--out", tmp_path / name,
            "--set", f"trainer.steps={steps}", "--set", "trainer.batch_size=64", "--set", f"model.hidden={hidden}",
            "--set", "model.depth=1", "--set", f"trainer.checkpoint_every={steps}", "--set", "eval.every=0",
            "--set", "eval.num_samples=200", "--set", "eval.writers=[]", "--set", "data.n=2000",
            "--set", "trainer.progress=false", "--set", "coupling.name=independent")
    assert r.code == 0, r.text
    return tmp_path / name


def test_init_from_loads_the_teachers_ema_weights_and_records_the_lineage(tmp_path):
    from fmkit.engine import checkpoint as ckpt
    from fmkit.engine.lineage import init_from_run

    teacher = _toy_run(tmp_path, "teacher")
    data = ckpt.load_checkpoint(ckpt.resolve_checkpoint(teacher))
    model = MLP(2, hidden=16, depth=1, time_dim=64)
    rec = init_from_run(model, teacher)
    assert rec["weights"] == "ema" and rec["step"] == 30
    assert all(torch.equal(v, data.tensors["ema"][k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(data.tensors["ema"][k], data.tensors["model"][k]) for k in data.tensors["ema"])
    rec = init_from_run(model, teacher, use_ema=False)
    assert rec["weights"] == "model" and all(torch.equal(v, data.tensors["model"][k])
                                             for k, v in model.state_dict().items())
    # through a recipe: a fine-tuning run starts at the teacher's weights and says so
    student = tmp_path / "student"
    r = cli("train", ROOT / "recipes" / "toy_moons.yaml", "--out", student, "--set", f"trainer.init_from={teacher}",
            "--set", "trainer.steps=1", "--set", "trainer.lr=1e-12", "--set", "trainer.warmup_steps=0",
            "--set", "model.hidden=16", "--set", "model.depth=1", "--set", "eval.every=0", "--set", "eval.metrics=[]",
            "--set", "eval.writers=[]", "--set", "trainer.progress=false", "--set", "data.n=2000",
            "--set", "trainer.batch_size=64")
    assert r.code == 0, r.text
    lineage = json.loads((student / "lineage.json").read_text())
    assert lineage["init_from"] == str(teacher.resolve()) and lineage["weights"] == "ema"
    assert lineage["fingerprint"]["model"]["hidden"] == 16
    got = ckpt.load_checkpoint(ckpt.resolve_checkpoint(student))
    assert got.meta["lineage"]["checkpoint"] == lineage["checkpoint"]
    for k, v in got.tensors["model"].items():  # one step at lr 1e-12: still the teacher's EMA weights
        assert torch.allclose(v, data.tensors["ema"][k], atol=1e-6), k


def test_init_from_refuses_an_incompatible_model_naming_the_tensors(tmp_path):
    teacher = _toy_run(tmp_path, "teacher")
    r = cli("train", ROOT / "recipes" / "toy_moons.yaml", "--out", tmp_path / "wrong",
            "--set", f"trainer.init_from={teacher}", "--set", "model.hidden=24", "--set", "model.depth=1",
            "--set", "trainer.steps=2", "--set", "trainer.progress=false", "--set", "data.n=2000")
    text = squash(r.text)
    assert r.code == 2, text
    assert "trainer.init_from" in text and "do not fit this model" in text
    assert "shape mismatch: net.0.weight" in text or "shape mismatch:" in text and "(24," in text
    assert "fix:" in text and "recipe.yaml" in text
    assert not (tmp_path / "wrong" / "checkpoints").exists()
    r = cli("train", ROOT / "recipes" / "toy_moons.yaml", "--out", tmp_path / "none",
            "--set", f"trainer.init_from={tmp_path / 'nope'}", "--set", "trainer.steps=2", "--set", "data.n=2000")
    assert r.code == 2 and "trainer.init_from" in squash(r.text) and "does not exist" in squash(r.text)


def test_cli_reflow_then_2rf_and_one_step_distillation_on_the_toy_recipe(tmp_path):
    teacher = _toy_run(tmp_path, "teacher", hidden=32, steps=60)
    r = cli("reflow", teacher, "--pairs", "3000", "--out", tmp_path / "pairs", "--steps", "20",
            "--shard-size", "1000")
    assert r.code == 0, r.text
    assert "3000 pairs from step_000000060 (euler, 20 steps)" in squash(r.text)
    man = json.loads((tmp_path / "pairs" / P.MANIFEST).read_text())
    assert man["teacher"]["run"] == str(teacher.resolve()) and man["teacher"]["step"] == 60
    assert man["teacher"]["weights"] == "ema" and man["solver"]["steps"] == 20 and man["complete"]
    # the same command again: nothing left to draw
    r = cli("reflow", teacher, "--pairs", "3000", "--out", tmp_path / "pairs", "--steps", "20", "--shard-size", "1000")
    assert r.code == 0 and "0 written" in squash(r.text), r.text
    # another configuration into the same folder is refused, not mixed in
    r = cli("reflow", teacher, "--pairs", "3000", "--out", tmp_path / "pairs", "--steps", "10", "--shard-size", "1000")
    assert r.code == 2 and "holds pairs of another reflow" in squash(r.text) and "solver" in squash(r.text)
    common = ["--set", f"data={{name: pairs, path: {tmp_path / 'pairs'}}}", "--set", "coupling.name=given",
              "--set", "model.hidden=32", "--set", "model.depth=1", "--set", "trainer.batch_size=64",
              "--set", "eval.every=0", "--set", "eval.num_samples=300", "--set", "eval.writers=[]",
              "--set", "trainer.progress=false"]
    r = cli("train", ROOT / "recipes" / "toy_moons.yaml", "--out", tmp_path / "rf2", *common,
            "--set", f"trainer.init_from={teacher}", "--set", "trainer.steps=40", "--set", "trainer.checkpoint_every=40")
    assert r.code == 0, r.text
    r = cli("train", ROOT / "recipes" / "toy_moons.yaml", "--out", tmp_path / "student", *common,
            "--set", f"trainer.init_from={tmp_path / 'rf2'}", "--set", "trainer.time_sampler=grid",
            "--set", "trainer.time_grid=[0.0]", "--set", "trainer.steps=40", "--set", "trainer.checkpoint_every=40",
            "--set", "solver.steps=1")
    assert r.code == 0, r.text
    lineage = json.loads((tmp_path / "student" / "lineage.json").read_text())
    assert lineage["init_from"] == str((tmp_path / "rf2").resolve())
    assert lineage["parent_lineage"]["init_from"] == str(teacher.resolve())  # the chain back to the first run
    r = cli("evaluate", tmp_path / "student", "--steps", "1", "-n", "300")
    assert r.code == 0 and "euler, 1 steps" in squash(r.text) and "w2" in r.text, r.text
    # metrics against the teacher's own data (rebuilt from its recorded options), not its samples
    from fmkit.app.recipe import load_recipe
    from fmkit.app.run import build_components

    rec = load_recipe(ROOT / "recipes" / "toy_moons.yaml", [s for s in common[1::2] if s.startswith("data")] +
                      ["data.reference=teacher"])
    ds = build_components(rec, with_eval=False).dataset
    moons = fmkit.get_registry().build("datasets", man["teacher"]["fingerprint"]["data"])
    assert torch.equal(ds.reference(50, seed=4)["x"], moons.reference(50, seed=4)["x"])
    assert not torch.equal(ds.reference(50, seed=4)["x"], P.PairsDataset(tmp_path / "pairs").reference(50, 4)["x"])
    # distillation's grid needs its times
    r = cli("recipe", "validate", ROOT / "recipes" / "toy_moons.yaml", "--set", "trainer.time_sampler=grid")
    assert r.code == 2 and "time_grid" in squash(r.text)


def test_reflow_resumes_after_sigint_with_no_pair_lost_or_twice(tmp_path):
    teacher = _toy_run(tmp_path, "teacher", hidden=64, steps=10)
    args = ["reflow", str(teacher), "--pairs", "24000", "--shard-size", "600", "--steps", "60"]
    log = tmp_path / "reflow.log"
    with open(log, "w") as out:
        p = subprocess.Popen([sys.executable, "-m", "fmkit", *args, "--out", "cut"], cwd=tmp_path,
                             env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
    man_path = tmp_path / "cut" / P.MANIFEST

    def shards() -> int:
        try:
            return len(json.loads(man_path.read_text())["shards"])
        except (OSError, ValueError, KeyError):
            return 0

    try:
        t0 = time.monotonic()
        while shards() < 2 and p.poll() is None and time.monotonic() - t0 < 120:
            time.sleep(0.01)
        assert p.poll() is None, "reflow finished before it could be interrupted: " + log.read_text()
        p.send_signal(signal.SIGINT)
        rc = p.wait(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    text = squash(log.read_text())
    assert rc == 130, text
    assert "reflow stopped by SIGINT" in text and "run the same command again" in text
    cut = json.loads(man_path.read_text())
    assert not cut["complete"] and 2 <= len(cut["shards"]) < 40
    assert not list((tmp_path / "cut").glob(".*tmp*"))  # no half-written shard left behind
    with pytest.raises(DataError, match="unfinished"):
        P.PairsDataset(tmp_path / "cut")
    r = subprocess.run([sys.executable, "-m", "fmkit", *args, "--out", "cut"], cwd=tmp_path, env=subprocess_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(cut['shards'])} shard(s) were there already" in squash(r.stdout)
    r = subprocess.run([sys.executable, "-m", "fmkit", *args, "--out", "whole"], cwd=tmp_path,
                       env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    resumed = json.loads(man_path.read_text())
    whole = json.loads((tmp_path / "whole" / P.MANIFEST).read_text())
    assert resumed["complete"] and [s["start"] for s in resumed["shards"]] == list(range(0, 24000, 600))
    # every shard bit for bit the uninterrupted run's: none lost, none drawn twice
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in whole["shards"]]
    a, b = P.PairsDataset(tmp_path / "cut"), P.PairsDataset(tmp_path / "whole")
    assert len(a) == 24000 and torch.equal(a.x0["x"], b.x0["x"]) and torch.equal(a.x1["x"], b.x1["x"])
    assert torch.unique(a.x0["x"], dim=0).shape[0] == 24000
