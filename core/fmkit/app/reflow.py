"""Reflow: draw (x0, x1 = ODE(x0)) pairs from a trained flow and store them (Liu et al. 2022,
"Flow Straight and Fast"; k-rectified flow retrains on these pairs, distillation fits one step).

x0 comes from the run's source with templates of its data (masks, conditions, sizes), so the
pairs follow the data's distribution of those; the teacher's velocity is integrated by the run's
solver or a given one, with its EMA weights by default. Shard k of a pairs folder
(:mod:`fmkit.app.builtin.pairs`) holds pairs ``[k S, (k + 1) S)`` drawn from a random stream of its own
``(seed, k)``: an interrupted reflow resumes at the first missing shard and writes exactly the
pairs an uninterrupted one would (no pair lost, none twice), bit for bit on the same machine.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmkit.app.builtin import pairs as P
from fmkit.engine.distributed import fold_seed, seed_generators
from fmkit.engine.stopping import TrainingInterrupted
from fmkit.errors import OutputError
from fmkit.flow.batching import cpu_call_size
from fmkit.flow.data import Dataset
from fmkit.flow.paths import StatePath
from fmkit.flow.sampling import generate
from fmkit.flow.solvers import AdaptiveSolver, FixedStepSolver, Solver
from fmkit.flow.sources import StateSource
from fmkit.flow.state import State, fields, to_device

REFLOW_STREAM = 0x7265666C  # "refl": the pairs' random streams, apart from training's and sampling's


class ReflowInterrupted(TrainingInterrupted):
    """Reflow stopped by a signal; every finished shard is kept and the same call resumes."""


@dataclass
class ReflowResult:
    """What a reflow call did: where the pairs are, how many exist, what this call added."""

    out: Path
    num_pairs: int
    shards: int
    shards_written: int  # by this call (the others were there already: a resume)
    seconds: float
    nfe_per_pair: int


def solver_record(solver: Solver, about: str | None = None) -> dict[str, Any]:
    """A solver as JSON for the manifest: its class and settings (method, steps, grid, tolerances)."""
    rec: dict[str, Any] = {"class": type(solver).__name__}
    for k in ("method", "steps", "rtol", "atol"):
        if hasattr(solver, k):
            rec[k] = getattr(solver, k)
    grid = getattr(solver, "grid", None)
    if grid is not None:
        rec["grid"] = [float(g) for g in grid]
    if about:
        rec["about"] = about
    return rec


def _progress(total: int, done: int, enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if not enabled:
        return None
    p = Progress(TextColumn("[bold]reflow"), BarColumn(bar_width=20), MofNCompleteColumn(), TextColumn("pairs"),
                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    p.start()
    return p, p.add_task("reflow", total=total, completed=done)


class _StopOnSignal:
    """SIGINT/SIGTERM ask to stop after the shard in hand (a second SIGINT stops at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@torch.no_grad()
def draw_pairs(model: nn.Module, path: StatePath, source: StateSource, solver: Solver, dataset: Dataset,
               template_seed: int, n: int, chunk_size: int, device: torch.device) -> tuple[State, State]:
    """``n`` pairs from the random stream seeded already: x0 from ``source`` for templates of ``dataset``
    (their masks and conditions ride with x1), x1 the solve of ``model``'s field from x0
    (:func:`fmkit.flow.sampling.generate`).

    Args:
        model: the teacher's velocity network, in eval mode on ``device``.
        path: the probability path the teacher was trained with.
        source: the teacher's source p_0, which draws x0.
        solver: integrates the teacher's field from t = 0 to 1.
        dataset: gives the templates (sizes, masks, conditions) of the pairs.
        template_seed: the seed of the first chunk's templates (chunk j uses ``template_seed + j``).
        n: number of pairs.
        chunk_size: pairs per solver call (on a CPU the model is called on slices of it:
            :func:`~fmkit.flow.batching.cpu_call_size`).
        device: where the solves run.

    Returns:
        ``(x0, x1)`` on the CPU, batch first: the fields of x0; x1's fields with its mask and cond.
    """
    x0s: list[State] = []
    x1s: list[State] = []
    for j, start in enumerate(range(0, n, chunk_size)):
        template = to_device(dataset.template(min(chunk_size, n - start), seed=template_seed + j), device)
        x0 = source.sample(template)
        x0s.append(to_device(fields(x0), "cpu"))
        x1s.append(to_device(generate(model, path, source, solver, template, x0=x0,
                                        call_size=cpu_call_size(template, device)).x, "cpu"))
    var = {k for k, f in dataset.info.fields.items() if any(s is None for s in f.shape)}
    return P._concat(x0s, var), P._concat(x1s, var)


def _nfe(solver: Solver) -> int:
    if isinstance(solver, FixedStepSolver):
        stages = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}[solver.method]
        steps = len(solver.grid) - 1 if solver.grid is not None else solver.steps
        return stages * steps
    return -1  # adaptive: counted per solve, not known in advance


def write_pairs(out: str | Path, model: nn.Module, path: StatePath, source: StateSource, solver: Solver,
                dataset: Dataset, num_pairs: int, *, teacher: Mapping[str, Any] | None = None,
                solver_about: str | None = None, seed: int = 0, shard_size: int = 4096, chunk_size: int = 1000,
                device: torch.device | str = "cpu", progress: bool = True) -> ReflowResult:
    """Write ``num_pairs`` pairs of ``model`` into the folder ``out`` (resuming what is there).

    The library form of ``fmkit reflow`` for live components. A folder that holds pairs of another
    configuration (teacher, solver, seed, count, shard size) is refused rather than mixed; SIGINT or
    SIGTERM stop after the shard in hand (:class:`ReflowInterrupted`), keeping every finished shard.

    Args:
        out: the pairs folder: new, empty, or one that a call with the same configuration began.
        model: the teacher's velocity network (put in eval mode for the call, restored after).
        path: the probability path the teacher was trained with.
        source: the teacher's source p_0, which draws x0.
        solver: integrates the teacher's field from t = 0 to 1.
        dataset: gives the templates (sizes, masks, conditions) of the pairs.
        num_pairs: pairs in the finished folder (those already there count).
        teacher: what the teacher is (JSON-able: run, checkpoint, step, weights), kept in the manifest.
        solver_about: a human description of the solver for the manifest.
        seed: the seed that shard k's random stream is folded from, with k.
        shard_size: pairs per safetensors shard, the unit of resuming.
        chunk_size: pairs per solver call (on a CPU the model is called on slices of it:
            :func:`~fmkit.flow.batching.cpu_call_size`).
        device: where the solves run.
        progress: show a progress bar while shards are written.

    Returns:
        What the folder holds and what this call added (shards written, seconds, NFE per pair).
    """
    out = Path(out)
    device = torch.device(device)
    if num_pairs < 1 or shard_size < 1 or chunk_size < 1:
        raise OutputError(f"num_pairs, shard_size and chunk_size must be >= 1 (got {num_pairs}, {shard_size}, "
                          f"{chunk_size})", where="reflow", fix="pass positive sizes (--pairs N)")
    config = {"num_pairs": int(num_pairs), "shard_size": int(shard_size), "seed": int(seed),
              "teacher": dict(teacher or {}), "solver": solver_record(solver, solver_about)}
    manifest = _open(out, config, dataset)
    done = {s["file"] for s in manifest["shards"]}
    n_shards = -(-num_pairs // shard_size)
    todo = [k for k in range(n_shards) if P.shard_name(k) not in done]
    have = sum(s["count"] for s in manifest["shards"])
    was_training = model.training
    model.eval()
    rng = torch.get_rng_state()
    t0 = time.perf_counter()
    bar = _progress(num_pairs, have, progress and bool(todo))
    written = 0
    try:
        with _StopOnSignal() as stop:
            for k in todo:
                start = k * shard_size
                m = min(shard_size, num_pairs - start)
                shard_seed = fold_seed(seed, REFLOW_STREAM, k)
                seed_generators(shard_seed, device)
                x0, x1 = draw_pairs(model, path, source, solver, dataset, shard_seed % (2**31), m, chunk_size, device)
                entry = P.write_shard(out, k, x0, x1)
                entry["start"] = start
                manifest["shards"] = sorted([*manifest["shards"], entry], key=lambda s: s["start"])
                have += m
                written += 1
                manifest["complete"] = have == num_pairs
                P.write_manifest(out, manifest)
                if bar is not None:
                    bar[0].update(bar[1], completed=have)
                if stop.signum is not None and have < num_pairs:
                    name = signal.Signals(stop.signum).name
                    raise ReflowInterrupted(
                        f"reflow stopped by {name} after {have} of {num_pairs} pairs ({len(manifest['shards'])} of "
                        f"{n_shards} shards); every finished shard is kept", where=str(out),
                        fix="run the same command again: it resumes at the first missing shard")
    finally:
        if bar is not None:
            bar[0].stop()
        torch.set_rng_state(rng)
        model.train(was_training)
    if not manifest.get("complete"):
        manifest["complete"] = have == num_pairs
        P.write_manifest(out, manifest)
    return ReflowResult(out, have, len(manifest["shards"]), written, time.perf_counter() - t0, _nfe(solver))


def _open(out: Path, config: dict[str, Any], dataset: Dataset) -> dict[str, Any]:
    """The folder's manifest: a new one, or the existing one when its configuration is ours."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the pairs folder {out}: {exc.strerror or exc}", where=str(out),
                          fix="pass --out with a folder you can write to") from None
    if (out / P.MANIFEST).is_file():
        man = P.read_manifest(out)
        diff = [k for k in config if _json(man.get(k)) != _json(config[k])]
        if diff:
            raise OutputError(f"{out} holds pairs of another reflow (it differs in: {', '.join(diff)})",
                              where=str(out), fix="pick another --out, or repeat the options that wrote it to resume")
        man["shards"] = [s for s in man.get("shards", []) if (out / s["file"]).is_file()]
        return man
    if any(p.name != P.MANIFEST for p in out.iterdir() if not p.name.startswith(".")):
        raise OutputError(f"{out} is not empty and holds no pairs manifest", where=str(out),
                          fix="pass --out with a new or empty folder")
    man = {"format": P.FORMAT, "version": P.VERSION, **config, "data_info": P.info_to_json(dataset.info),
           "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "complete": False, "shards": []}
    P.write_manifest(out, man)
    return man


def _json(v: Any) -> Any:
    import json

    return json.loads(json.dumps(v))


def reflow_run(run: str | Path, out: str | Path, num_pairs: int, *, solver: Solver | None = None,
               solver_about: str | None = None, checkpoint: str | Path | None = None, use_ema: bool = True,
               seed: int = 0, shard_size: int = 4096, chunk_size: int | None = None,
               overrides: list[str] | None = None, progress: bool = True) -> ReflowResult:
    """Pairs from a trained run (what ``fmkit reflow RUN --pairs N --out PAIRS`` calls): its recipe's
    model, path, source and data templates, its guidance scale, device and CPU threads.

    Args:
        run: the teacher's run directory.
        out: the pairs folder (see :func:`write_pairs`).
        num_pairs: pairs in the finished folder.
        solver: integrates the teacher's field; None: the run's recipe's solver.
        solver_about: a human description of ``solver`` for the manifest.
        checkpoint: the checkpoint folder to load; None: the run's newest.
        use_ema: load the EMA weights (when the checkpoint has them), else the raw ones.
        seed: the seed of the pairs' random streams.
        shard_size: pairs per safetensors shard, the unit of resuming.
        chunk_size: pairs per solver call; None: the recipe's ``eval.chunk_size``.
        overrides: ``KEY=VALUE`` recipe overrides (``--set``); a changed model, path or source is refused.
        progress: show a progress bar.

    Returns:
        What the folder holds and what this call added.
    """
    from fmkit.app.inference import guided
    from fmkit.app.run import build_components, fingerprint, load_run_recipe
    from fmkit.engine.checkpoint import load_checkpoint, resolve_checkpoint
    from fmkit.engine.fingerprint import check_fingerprint
    from fmkit.engine.setup import pick_device, set_cpu_threads
    from fmkit.engine.train_state import load_model_state

    run = Path(run)
    rec = load_run_recipe(run, overrides or [])
    comps = build_components(rec, with_eval=False)
    ck = Path(checkpoint) if checkpoint is not None else resolve_checkpoint(run)
    data = load_checkpoint(ck)
    check_fingerprint(data.meta.get("fingerprint") or {}, fingerprint(rec), str(ck),
                      sections=("model", "path", "source"),
                      fix="restore the run's recipe.yaml (drop --set for these keys), or use a checkpoint of this run")
    which = "ema" if use_ema and "ema" in data.tensors else "model"
    load_model_state(comps.model, data.tensors[which], str(ck))
    device = pick_device(rec.trainer.device)
    if device.type == "cpu":
        set_cpu_threads(rec.trainer)
    guidance = rec.eval.guidance_scale
    model, _ = guided(comps.model.to(device).eval(), rec, comps.dataset.info.null_class)
    s = solver or comps.solver
    if isinstance(s, AdaptiveSolver):
        from fmkit.flow.solvers import check_continuous_only

        check_continuous_only(s, [k for k, f in comps.dataset.info.fields.items() if f.categorical])
    teacher = {"run": str(run.resolve()), "recipe": rec.name, "checkpoint": str(ck.resolve()),
               "step": int(data.meta.get("step", -1)), "weights": which, "guidance_scale": guidance,
               "fingerprint": data.meta.get("fingerprint") or {}}
    return write_pairs(out, model, comps.path, comps.source, s, comps.dataset, num_pairs, teacher=teacher,
                       solver_about=solver_about, seed=seed, shard_size=shard_size,
                       chunk_size=chunk_size or rec.eval.chunk_size, device=device, progress=progress)
