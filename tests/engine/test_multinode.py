"""Several nodes (docs/scale.md, "Several nodes"): two torchrun "nodes" on this machine (two agents
with ``--nnodes 2 --nproc-per-node 1``, a c10d rendezvous on 127.0.0.1, gloo) train the toy recipe
to the same weights, bit for bit, as one torchrun node with ``--nproc-per-node 2``. The world size
is the same, hence the shards and their random streams (tests/engine/test_ddp.py has the contract).

Each node runs in a working directory of its own with a relative ``--out``, as nodes whose disks are
not shared: the node that got global rank 0 (c10d gives the node ranks out itself) holds the whole
run, and the other wrote nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
TRAIN = ["-m", "fmkit", "train", str(ROOT / "recipes" / "toy_moons.yaml"), "--out", "run",
         *[a for s in [f"trainer.steps={STEPS}", f"trainer.checkpoint_every={STEPS}", "trainer.log_every=3",
                       "trainer.batch_size=64", "trainer.progress=false", "trainer.device=cpu", "eval.every=0",
                       "eval.num_samples=64", "eval.writers=[]", "solver.steps=4"] for a in ("--set", s)]]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", FMKIT_PLUGINS="none")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "core"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_nodes(cmds: list[list[str]], cwds: list[Path], timeout: float) -> None:
    """Start every node's torchrun at once (a rendezvous waits for all), then wait for all."""
    procs = [subprocess.Popen(c, cwd=d, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c, d in zip(cmds, cwds)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"a node failed ({p.returncode}):\n{out[-3000:]}\n{err[-3000:]}"


@pytest.mark.timeout(400)
def test_two_nodes_train_the_weights_of_one_node_with_the_same_world_size(tmp_path: Path) -> None:
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    single = tmp_path / "single"
    for d in (*nodes, single):
        d.mkdir()
    endpoint = f"127.0.0.1:{_free_port()}"
    _run_nodes([[*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                 "--rdzv-endpoint", endpoint, "--rdzv-id", f"fmkit-test-{os.getpid()}",
                 "--rdzv-conf", f"is_host={int(i == 0)}", "--local-addr", "127.0.0.1", *TRAIN]
                for i in range(2)], nodes, timeout=240)
    _run_nodes([[*TORCHRUN, "--standalone", "--nproc-per-node", "2", *TRAIN]], [single], timeout=240)

    # rank 0 wrote the run on its own node; the other node's directory stayed empty
    holders = [d for d in nodes if (d / "run").exists()]
    assert len(holders) == 1, [sorted(p.name for p in d.iterdir()) for d in nodes]
    assert [list(d.iterdir()) for d in nodes if d not in holders] == [[]]
    two, one = holders[0] / "run", single / "run"

    step = f"step_{STEPS:09d}"
    for run in (two, one):
        meta = json.loads((run / "checkpoints" / step / "meta.json").read_text())
        assert meta["world_size"] == 2 and meta["step"] == STEPS and meta["finished"], meta
    for group in ("model", "ema"):
        a = load_file(str(two / "checkpoints" / step / f"{group}.safetensors"))
        b = load_file(str(one / "checkpoints" / step / f"{group}.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{group}.{k} differs between 2 nodes x 1 and 1 node x 2"
    trained = load_file(str(one / "checkpoints" / step / "model.safetensors"))
    ema = load_file(str(one / "checkpoints" / step / "ema.safetensors"))
    assert any(not torch.equal(trained[k], ema[k]) for k in trained), "the model did not move from its start"
    from fmkit.engine.metrics_log import read_metrics

    losses = [read_metrics(run)["loss"] for run in (two, one)]  # the mean over both ranks, logged by rank 0
    assert losses[0] == losses[1] and [s for s, _ in losses[0]] == [3, 6], losses
