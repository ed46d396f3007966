"""Shared pieces of the benchmarks: the data stream the hand-written loops use, synthetic QM9-sized
molecules, timing helpers and result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


class Batches:
    """The data side of the hand-written loops: a fresh permutation per epoch, cut into full batches,
    gathered with one tensor index (what fmkit's ``BatchStream`` does for an in-memory dataset)."""

    def __init__(self, data: torch.Tensor, batch: int, seed: int = 0) -> None:
        self.data, self.batch = data, batch
        self.g = torch.Generator().manual_seed(seed)
        self.perm = torch.randperm(data.shape[0], generator=self.g)
        self.pos = 0

    def __next__(self) -> torch.Tensor:
        if self.pos + self.batch > self.data.shape[0]:
            self.perm = torch.randperm(self.data.shape[0], generator=self.g)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return self.data[idx]


def synthetic_molecules(n: int, seed: int = 0, size: int | None = None) -> list:
    """``n`` random H/C/N/O/F molecules as ``fmkit_molecules.xyz.Record``: ``size`` atoms each, or
    QM9's sizes (atom counts ~ N(18, 3) clipped to 3..29, ~45% heavy atoms). Their geometry is noise:
    for timing models and couplings only the atom counts and element mix matter."""
    import numpy as np
    from fmkit_molecules.xyz import Record

    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        k = size or int(np.clip(round(rng.normal(18, 3)), 3, 29))
        heavy = max(1, round(k * 0.45))
        syms = tuple(rng.choice(["C", "C", "C", "N", "O", "F"], heavy).tolist() + ["H"] * (k - heavy))
        recs.append(Record(f"syn{i}", syms, rng.normal(size=(k, 3)) * 1.6))
    return recs


def hardware() -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu": cpu, "cores_visible": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_avg"] = os.getloadavg()
    except OSError:
        pass
    return info


def git_rev() -> str | None:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def command_line() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0], ROOT.parent)] + sys.argv[1:])


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def timed2(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). On a shared machine the CPU time is the steadier
    measure of work done (it does not count time the process waited for a core)."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def write_results(name: str, payload: dict, markdown: str, out: Path | None) -> tuple[Path, Path]:
    out = Path(out) if out is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    payload = {"command": command_line(), "git": git_rev(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "hardware": hardware(), **payload}
    j = out / f"{name}.json"
    m = out / f"{name}.md"
    j.write_text(json.dumps(payload, indent=2) + "\n")
    m.write_text(f"<!-- written by: {payload['command']} -->\n"
                 f"Command: `{payload['command']}`  \n"
                 f"Hardware: {payload['hardware']['cpu']}, {payload['hardware']['cores_visible']} cores visible, "
                 f"torch {payload['hardware']['torch']} with {payload['hardware']['torch_threads']} thread(s)"
                 f"{', GPU ' + str(payload['hardware']['cuda']) if payload['hardware']['cuda'] else ''}; "
                 f"git {payload['git']}; {payload['date']}\n\n" + markdown + "\n")
    return j, m


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub-markdown table (also what the scripts print)."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])
