"""The ``fmkit`` command line (typer): train, sample, evaluate, reflow, plugins, recipe.

User errors (:class:`fmkit.errors.FmkitError`) print as *what / where / fix* without a traceback;
``fmkit --debug ...`` (or ``FMKIT_DEBUG=1``) shows one.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from fmkit.errors import FmkitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fmkit: flow matching from YAML recipes.")
recipe_app = typer.Typer(no_args_is_help=True, help="Validate and inspect recipes.")
app.add_typer(recipe_app, name="recipe")
console = Console()
err_console = Console(stderr=True)
_STATE = {"debug": os.environ.get("FMKIT_DEBUG", "") not in ("", "0")}

#: the most samples one `fmkit sample` makes (they are held in memory to be written): 10^7 2-D points
#: are 80 MB; more is a typo such as -n 1000000000000
MAX_SAMPLES = 10_000_000

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override: key.path=value (repeatable)")]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    if debug:
        _STATE["debug"] = True


def _registry():
    from fmkit.app.registry import get_registry

    return get_registry()


@app.command()
def train(
    ctx: typer.Context,
    recipe: Annotated[Optional[Path], typer.Argument(help="recipe YAML file")] = None,
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="run directory (default runs/<name>-<time>)")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="continue the run in this directory")] = None,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", min=1, help="processes (GPUs) on this node; "
                                                ">1 hands off to torch.distributed.run (DDP)")] = 1,
) -> None:
    """Train a model from a recipe (or resume a run)."""
    if nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        _launch_torchrun(ctx, nproc_per_node, recipe, resume, set_)
        return
    from fmkit.app.recipe import load_recipe
    from fmkit.app.run import RECIPE_FILE, build_trainer, load_run_recipe, new_run_dir
    from fmkit.engine.distributed import init_from_env

    do_resume = resume is not None
    if resume is not None:
        from fmkit.engine.callbacks import Callback
        from fmkit.engine.checkpoint import LATEST

        rec = load_run_recipe(resume, set_ or [])
        dist = init_from_env(device=rec.trainer.device)  # gloo for a CPU recipe, also on a GPU host
        if recipe is not None:
            console.print(f"[yellow]note:[/] resuming uses {resume / RECIPE_FILE}; {recipe} is ignored")
        run_dir = resume
        trainer = build_trainer(rec, run_dir)
        ckpts = resume / "checkpoints"
        if not (ckpts / LATEST).exists() and not any(ckpts.glob("step_*")):
            # stopped before its first checkpoint (killed early): nothing to resume, start it afresh
            console.print(f"[yellow]note:[/] {resume} has no checkpoint yet; training it from step 0")
            do_resume = False
        if dist.rank == 0 and set_:
            class _SaveRecipe(Callback):  # only once the checkpoint has loaded into the overridden recipe
                def on_train_start(self, trainer) -> None:
                    from fmkit.engine.checkpoint import write_atomic_text

                    write_atomic_text(run_dir / RECIPE_FILE, rec.to_yaml())  # a kill never leaves half a recipe

            trainer.callbacks.append(_SaveRecipe())
    else:
        if recipe is None:
            raise FmkitError("no recipe given", where="fmkit train", fix="run `fmkit train recipes/toy_moons.yaml`")
        rec = load_recipe(recipe, set_ or [])
        dist = init_from_env(device=rec.trainer.device)
        trainer = build_trainer(rec, None)  # data and model first: a failure there leaves no run directory
        run_dir = _on_rank0(dist, lambda: new_run_dir(rec, out))  # every rank gets rank 0's directory
        trainer.run_dir = Path(run_dir)
    if dist.rank == 0 and rec.cpu_alternative and trainer.device.type == "cpu" and rec.trainer.device == "auto":
        console.print(f"[yellow]note:[/] no GPU here: this recipe is sized for one and runs very slowly on a CPU; "
                      f"on a CPU train `fmkit train {rec.cpu_alternative}` instead", highlight=False)
    if dist.rank == 0:
        from fmkit.engine.callbacks import Callback

        class _Announce(Callback):  # once training really starts: not before a refused resume, say
            def on_train_start(self, trainer) -> None:
                console.print(f"run directory: [bold]{run_dir}[/]  device: {trainer.device}  "
                              f"params: {sum(p.numel() for p in trainer.model.parameters()):,}")

        trainer.callbacks.insert(0, _Announce())
    t0 = time.perf_counter()
    try:
        trainer.fit(resume=do_resume)
    finally:  # finished, stopped by Ctrl-C or failed: the picture of what was trained so far
        if dist.rank == 0:
            _write_curves(Path(run_dir))
    if dist.rank == 0:
        early = f" (stopped early: {trainer.stopped_early})" if trainer.stopped_early is not None else ""
        console.print(f"trained to step {trainer.step}{early} in {time.perf_counter() - t0:.1f} s; "
                      f"checkpoints in {run_dir / 'checkpoints'}", highlight=False)
        _print_eval(run_dir, trainer.metrics.values())


def _launch_torchrun(ctx: typer.Context, n: int, recipe: Optional[Path], resume: Optional[Path],
                     set_: Optional[list[str]]) -> None:
    """Re-run this very command under ``torch.distributed.run`` with ``n`` processes on this node
    (``--standalone``: a private rendezvous on a free port). Multi-node: call torchrun yourself
    (docs/scale.md); inside torchrun, ``--nproc-per-node`` is ignored."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # check the recipe once here, so a mistake is reported once and not by every process
    if resume is not None:
        from fmkit.app.run import load_run_recipe

        rec = load_run_recipe(resume, set_ or [])
    elif recipe is not None:
        from fmkit.app.recipe import load_recipe

        rec = load_recipe(recipe, set_ or [])
    else:
        raise FmkitError("no recipe given", where="fmkit train", fix="run `fmkit train recipes/toy_moons.yaml`")
    t = rec.trainer
    from fmkit.engine.setup import pick_device

    pick_device(t.device)  # a device this machine lacks: said once here, not by every process
    if t.batch_size % (t.grad_accum * n):
        raise FmkitError(f"trainer.batch_size={t.batch_size} is not divisible by grad_accum x processes = "
                         f"{t.grad_accum} x {n}", where="trainer.batch_size / --nproc-per-node",
                         fix="pick a batch size that is a multiple of both")
    args = ["--standalone", f"--nproc-per-node={n}", "-m", "fmkit"] + (["--debug"] if _STATE["debug"] else [])
    args += _replay_args(ctx, skip={"nproc_per_node"})
    try:
        torchrun.run(torchrun.parse_args(args))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if isinstance(failure.exitcode, int) and failure.exitcode > 0 else 1
        err_console.print(f"[bold red]error:[/] distributed training failed: process {rank} of {n} exited with "
                          f"code {failure.exitcode} (the error is printed above); the others were stopped",
                          highlight=False)
        raise SystemExit(code) from None
    except SignalException as exc:  # Ctrl-C / SIGTERM reached this launcher; torchrun passed it on to the ranks
        err_console.print(f"[bold yellow]stopped:[/] {exc.sigval.name} reached the launcher; the {n} processes "
                          f"stopped together (their checkpoint is reported above)", highlight=False)
        raise SystemExit(128 + int(exc.sigval)) from None


def _on_rank0(dist, fn):
    """``fn()`` run on rank 0 alone, its result (or its error) handed to every rank so that all go on,
    or all stop, together; rank 0 reports the error, the others exit with its code quietly."""
    if dist.world_size == 1:
        return fn()
    import torch.distributed as td

    box: list = [None]
    err: FmkitError | None = None
    if dist.rank == 0:
        try:
            box = [("ok", fn())]
        except FmkitError as exc:
            err, box = exc, [("error", exc.exit_code)]
    td.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        if err is not None:
            raise err
        raise SystemExit(value)
    return value


def _replay_args(ctx: typer.Context, skip: set[str]) -> list[str]:
    """The command line of ``ctx``'s command rebuilt from its parsed parameters (every option a
    command has is replayed, so new options need no change here)."""
    out = [ctx.info_name or ""]
    for p in ctx.command.params:
        if p.name in skip or p.name not in ctx.params:
            continue
        v = ctx.params[p.name]
        if v is None or (p.param_type_name == "option" and v == p.default):
            continue
        if p.param_type_name == "argument":
            out += [str(x) for x in v] if isinstance(v, (list, tuple)) else [str(v)]
        elif getattr(p, "is_flag", False):
            out.append(p.opts[0] if v else p.secondary_opts[0])
        elif getattr(p, "multiple", False):
            for x in v:
                out += [p.opts[0], str(x)]
        else:
            out += [p.opts[0], str(v)]
    return out


def _write_curves(run_dir: Path) -> None:
    """``run_dir/curves.png`` from its metrics, if it has any; a failure to draw is a note, never
    the run's error (the exception in flight, a Ctrl-C say, is the one that counts)."""
    from fmkit.engine.curves import plot_curves

    try:
        plot_curves(run_dir)
    except FmkitError:  # no metrics.csv or nothing logged yet (stopped before its first log step): no picture
        pass
    except Exception as exc:  # noqa: BLE001 - a picture is never worth losing the run's own outcome
        console.print(f"[yellow]note:[/] could not draw {run_dir / 'curves.png'}: {type(exc).__name__}: {exc}")


def _print_tables(title: str, rows: list[tuple[str, str]], metrics) -> None:
    """``rows`` as one table titled ``title``, plus a table of each protocol a metric declares."""
    from fmkit.app.builtin.metrics import metric_tables

    for sub, group in metric_tables(rows, metrics):
        head = sub or title
        table = Table(title=head, min_width=min(len(head) + 2, 120))  # rich wraps a title wider than the table
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in group:
            table.add_row(k, v)
        console.print(table)


def _print_eval(run_dir: Path, metrics=()) -> None:
    from fmkit.engine.metrics_log import read_metrics

    m = read_metrics(run_dir)
    ev = {k[5:]: v[-1] for k, v in m.items() if k.startswith("eval/")}
    if ev:  # in the recipe's metric order, as `fmkit evaluate` prints them
        _print_tables(f"evaluation at step {max(s for s, _ in ev.values())}",
                      [(k, f"{v:.4f}") for k, (_, v) in ev.items()], metrics)


CheckpointOpt = Annotated[Optional[str], typer.Option(
    "--checkpoint", "-c", metavar="STEP|DIR",
    help="an older checkpoint of RUN: its step (as in checkpoints/step_*) or its folder (default: the newest)")]


def _pick_checkpoint(run: Path, which: str | None) -> Path:
    """RUN's checkpoint to load: the newest verified one, or ``--checkpoint`` given as a step number
    or a checkpoint folder of RUN (a folder of another run would pair weights with the wrong recipe)."""
    from fmkit.engine.checkpoint import complete_checkpoints, resolve_checkpoint, step_dir_name

    if which is None:
        return resolve_checkpoint(run)
    root = run / "checkpoints"
    kept = complete_checkpoints(root)
    have = ", ".join(str(int(p.name.split("_")[-1])) for p in kept) or "none"
    ck = root / step_dir_name(int(which)) if which.isdigit() else Path(which)
    if ck.resolve() not in {p.resolve() for p in kept}:
        raise FmkitError(f"{which!r} is not a complete checkpoint of {run}", where="--checkpoint",
                         fix=f"give one of its kept steps ({have}) or a folder under {root}; "
                             "trainer.keep_checkpoints sets how many a run keeps")
    return ck  # verified when it is loaded


def _load_for_inference(run: Path, set_: list[str] | None, which: str | None = None):
    from fmkit.app.run import build_components, fingerprint, load_run_recipe
    from fmkit.engine.checkpoint import check_fingerprint, load_checkpoint, load_resolved
    from fmkit.engine.snapshot import load_model_state

    rec = load_run_recipe(run, set_ or [])
    comps = build_components(rec)
    if which is None:  # the newest that loads (a damaged one is skipped with a note)
        ck, data = load_resolved(run)
    else:
        ck = _pick_checkpoint(run, which)
        data = load_checkpoint(ck)
    # the model's output means what the path's prediction and the source say: all three must match
    check_fingerprint(data.meta.get("fingerprint") or {}, fingerprint(rec), str(ck),
                      sections=("model", "path", "source"),
                      fix="restore the run's recipe.yaml (drop --set for these keys), or use a checkpoint from this "
                          "recipe")
    weights = data.tensors.get("ema") if rec.eval.use_ema and "ema" in data.tensors else data.tensors["model"]
    load_model_state(comps.model, weights, str(ck))
    return rec, comps, ck, data


def _device(rec) -> "torch.device":  # noqa: F821
    """The recipe's device; on a CPU also its ``trainer.cpu_threads`` (sampling runs the same network)."""
    from fmkit.engine.setup import pick_device, set_cpu_threads

    dev = pick_device(rec.trainer.device)
    if dev.type == "cpu":
        set_cpu_threads(rec.trainer)
    return dev


def _solver(rec, solver: str | None, steps: int | None, rtol: float | None = None,
            atol: float | None = None) -> tuple:
    """The solver to sample with: the recipe's, or ``--solver`` (with its defaults), with ``--steps``
    or ``--rtol``/``--atol`` on top; and a short description of it for tables (``euler, 50 steps``)."""
    from fmkit.app.recipe import Component

    reg = _registry()
    spec = rec.solver.spec()
    if solver:
        reg.get("solvers", solver, where="--solver")  # an unknown name: the closest match, by option
        spec = {"name": solver}
    flags = {"steps": ("--steps", steps), "rtol": ("--rtol", rtol), "atol": ("--atol", atol)}
    entry = reg.get("solvers", spec["name"], where="solver")
    fields = set(entry.options.model_fields) if entry.options is not None else set()
    for key, (flag, value) in flags.items():
        if value is None:
            continue
        if key not in fields:
            def takes(k: str) -> list[str]:
                return sorted(n for n, e in reg.entries("solvers").items()
                              if e.options is not None and k in e.options.model_fields)

            if key == "steps":
                fix = (f"--steps applies to fixed-step solvers ({', '.join(takes('steps'))}); an adaptive one such as "
                       f"{spec['name']!r} takes --rtol/--atol")
            else:
                fix = (f"{flag} applies to adaptive solvers ({', '.join(takes(key))}); a fixed-step one such as "
                       f"{spec['name']!r} takes --steps")
            raise FmkitError(f"solver {spec['name']!r} has no option {key!r}", where=flag, fix=fix)
        spec[key] = value
    resolved = reg.resolve("solvers", Component(**spec).spec(), where="solver (with --solver/--steps/--rtol/--atol)")
    return reg.build("solvers", resolved, where="solver"), describe_solver(resolved)


def describe_solver(spec: dict) -> str:
    """``euler, 50 steps`` or ``dopri5, rtol 1e-05, atol 1e-05`` (other options as key value)."""
    opts = {k: v for k, v in spec.items() if k != "name" and v is not None}
    parts = [spec["name"]] + [f"{v} steps" if k == "steps" else f"{k} {v}" for k, v in opts.items()]
    return ", ".join(parts)


@app.command()
def sample(
    run: Annotated[Path, typer.Argument(help="run directory")],
    n: Annotated[int, typer.Option("-n", "--num", min=1, max=MAX_SAMPLES, help="number of samples (generated "
                                   "in chunks of eval.batch_size)")] = 1000,
    solver: Annotated[Optional[str], typer.Option(help="solver name (default: the recipe's)")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="solver steps (fixed-step solvers)")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="relative tolerance (adaptive solvers)")] = None,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="absolute tolerance (adaptive solvers)")] = None,
    out: Annotated[Optional[str], typer.Option(help="output folder name inside RUN/samples (default: a new cli-<time> "
                                               "folder); an existing non-empty one needs --overwrite")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="write into an existing --out folder, replacing "
                                            "files of the same names")] = False,
    seed: int = 0,
    guidance: Annotated[Optional[float], typer.Option(help="classifier-free guidance scale")] = None,
    checkpoint: CheckpointOpt = None,
    set_: SetOpt = None,
) -> None:
    """Generate samples from a trained run and write them (artefacts + safetensors)."""
    import torch

    from fmkit.engine.checkpoint import save_tensors
    from fmkit.engine.evaluation import each, sample_in_chunks
    from fmkit.flow.guidance import ClassifierFreeGuidance

    rec, comps, ck, _ = _load_for_inference(run, set_, checkpoint)
    dev = _device(rec)
    s, _ = _solver(rec, solver, steps, rtol, atol)
    out_dir = _sample_dir(Path(run), out, overwrite)
    model = comps.model.to(dev).eval()
    if guidance is not None:
        if comps.dataset.info.num_cond_classes is None:
            raise FmkitError("--guidance needs a conditional dataset", where="--guidance", fix="drop --guidance")
        model = ClassifierFreeGuidance(model, guidance, comps.dataset.info.num_cond_classes)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    try:
        samples = sample_in_chunks(model, comps.path, comps.source, s, comps.dataset, n, rec.eval.batch_size, dev,
                                   seed)
        _check_finite(samples)
    except BaseException as exc:
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed run leaves no empty samples/cli-* folder behind
        if isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc)):
            raise FmkitError(f"ran out of memory while sampling chunks of {rec.eval.batch_size} on {dev}",
                             where="eval.batch_size",
                             fix=f"sample in smaller chunks: --set eval.batch_size={max(1, rec.eval.batch_size // 4)}"
                             ) from None
        raise
    dt = time.perf_counter() - t0
    save_tensors({k: v.contiguous() for k, v in samples.items()}, out_dir / "samples.safetensors")
    files = [out_dir / "samples.safetensors"]
    step = int(ck.name.split("_")[-1])
    failed = each(comps.writers, lambda _, w: files.extend(w(samples, out_dir, comps.dataset, step)))
    console.print(f"{n} samples in {dt:.1f} s from {ck.name}; wrote:")
    for f in files:
        console.print(f"  {f}")
    if failed is not None:  # after the files the other writers made are listed
        raise failed


def _check_finite(samples: dict) -> None:
    """Refuse samples holding NaN/Inf: a diverged model's output is no result to write (exit 0 said it was)."""
    for k, v in samples.items():
        if k in ("mask", "cond") or not v.is_floating_point():
            continue
        bad = (~v.isfinite()).reshape(v.shape[0], -1).any(1)
        if bad.any():
            raise FmkitError(f"{int(bad.sum())} of {v.shape[0]} samples hold NaN/Inf in field {k!r}",
                             where="the model's velocity / the solver",
                             fix="the checkpoint's weights or the solver diverged: try another checkpoint "
                                 "(--checkpoint), more --steps, or check the run's loss curve (fmkit curves RUN)")


def _sample_dir(run: Path, out: str | None, overwrite: bool) -> Path:
    """The folder to write samples into, made before sampling: ``--out`` inside RUN/samples (refused
    when it holds files, unless ``--overwrite``), or a new ``cli-<time>[-N]`` folder."""
    from fmkit.app.run import safe_output_path
    from fmkit.errors import OutputError

    base = run / "samples"
    if out is None:
        stem = f"cli-{time.strftime('%Y%m%d-%H%M%S')}"
        out_dir, i = safe_output_path(base, stem), 1
        while out_dir.exists():
            i += 1
            out_dir = safe_output_path(base, f"{stem}-{i}")
    else:
        out_dir = safe_output_path(base, out)
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
            raise OutputError(f"{out_dir} already exists and is not empty", where="--out",
                              fix="pick another --out name, or pass --overwrite to write into it (files of the same "
                                  "names are replaced)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the sample folder {out_dir}: {exc.strerror or exc}", where="--out",
                          fix="pick another --out name") from None
    return out_dir


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory")],
    n: Annotated[Optional[int], typer.Option("-n", "--num", min=1, help="samples (default: eval.num_samples)")] = None,
    solver: Annotated[Optional[str], typer.Option(help="solver name (default: the recipe's)")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="solver steps (fixed-step solvers)")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="relative tolerance (adaptive solvers)")] = None,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="absolute tolerance (adaptive solvers)")] = None,
    likelihood: Annotated[bool, typer.Option("--likelihood", help="also NLL / bits per dim of data (see --estimator)")] = False,
    likelihood_n: Annotated[int, typer.Option(min=1, help="data points for the likelihood")] = 500,
    estimator: Annotated[str, typer.Option(help="divergence (--likelihood): auto (exact up to 32 dims per "
                                                "example, else hutchinson), exact or hutchinson")] = "auto",
    seed: int = 0,
    checkpoint: CheckpointOpt = None,
    set_: SetOpt = None,
) -> None:
    """Sample from a run and print its metrics (and optionally the test log-likelihood)."""
    import torch

    from fmkit.engine.evaluation import sample_in_chunks
    from fmkit.flow.likelihood import ESTIMATORS

    if estimator not in ESTIMATORS:  # before any sampling: a typo must not cost a whole evaluation
        raise FmkitError(f"unknown divergence estimator {estimator!r}", where="--estimator",
                         fix=f"use one of: {', '.join(ESTIMATORS)}")
    rec, comps, ck, _ = _load_for_inference(run, set_, checkpoint)
    dev = _device(rec)
    s, about = _solver(rec, solver, steps, rtol, atol)
    model = comps.model.to(dev).eval()
    num = n or rec.eval.num_samples
    rows: list[tuple[str, str]] = []
    if comps.metrics:
        torch.manual_seed(seed)
        samples = sample_in_chunks(model, comps.path, comps.source, s, comps.dataset, num, rec.eval.batch_size, dev,
                                   seed)
        for metric in comps.metrics.values():
            for k, v in metric(samples, comps.dataset).items():
                rows.append((k, f"{v:.4f}"))
    if likelihood:
        from fmkit.flow.likelihood import log_likelihood
        from fmkit.flow.sampling import model_velocity
        from fmkit.flow.state import to_device

        torch.manual_seed(seed)
        ref = to_device(comps.dataset.reference(likelihood_n, seed=seed + 1), dev)
        if solver or any(v is not None for v in (steps, rtol, atol)):
            lsolver, labout = s, about
        else:  # the likelihood needs an accurate solve, whatever the recipe samples with
            lsolver, labout = _solver(rec, "dopri5", None, 1e-5, 1e-5)
        try:
            with console.status(f"log-likelihood of {likelihood_n} examples ({estimator} divergence, {labout})"):
                res = log_likelihood(model_velocity(model, comps.path, ref.get("mask"), ref.get("cond")), ref,
                                     comps.source, lsolver, estimator=estimator)
        except (NotImplementedError, ValueError) as exc:
            raise FmkitError(f"log-likelihood is not available for this run: {exc}",
                             fix="use a source with a closed-form density and continuous fields only") from None
        rows.append(("nll (nats)", f"{-res.log_prob.mean().item():.4f}"))
        rows.append(("bits/dim", f"{res.bits_per_dim.mean().item():.4f}"))
        rows.append(("likelihood nfe", str(res.nfe)))
        rows.append(("likelihood solver", labout))
    if not rows:
        raise FmkitError("the run's recipe lists no metrics", where="eval.metrics",
                         fix="add e.g. `eval: {metrics: [{name: w2}]}` or pass --likelihood")
    title = f"{run} @ {ck.name}" + (f" ({num} samples, {about})" if comps.metrics else "")
    _print_tables(title, rows, comps.metrics.values())


@app.command()
def reflow(
    run: Annotated[Path, typer.Argument(help="the teacher's run directory")],
    pairs: Annotated[int, typer.Option("--pairs", min=1, help="number of (x0, x1) pairs to draw")],
    out: Annotated[Path, typer.Option("--out", "-o", help="pairs folder (new, or one this command began: it resumes)")],
    solver: Annotated[Optional[str], typer.Option(help="solver name (default: the recipe's)")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="solver steps (fixed-step solvers)")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="relative tolerance (adaptive solvers)")] = None,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="absolute tolerance (adaptive solvers)")] = None,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="the teacher's EMA weights (default) or its raw ones")]
    = True,
    shard_size: Annotated[int, typer.Option(min=1, help="pairs per safetensors shard (the unit of resuming)")] = 4096,
    seed: int = 0,
    checkpoint: CheckpointOpt = None,
    set_: SetOpt = None,
) -> None:
    """Draw (x0, x1 = ODE(x0)) pairs from a trained run for reflow / distillation (docs/fewstep.md)."""
    from fmkit.app.reflow import reflow_run
    from fmkit.app.run import load_run_recipe

    rec = load_run_recipe(run, set_ or [])
    s, about = _solver(rec, solver, steps, rtol, atol)
    ck = _pick_checkpoint(run, checkpoint)
    res = reflow_run(run, out, pairs, solver=s, solver_about=about, checkpoint=ck, use_ema=ema, seed=seed,
                     shard_size=shard_size, overrides=set_ or [])
    resumed = f" ({res.shards - res.shards_written} shard(s) were there already)" if res.shards_written < res.shards \
        else ""
    console.print(f"{res.num_pairs} pairs from {ck.name} ({about}) in {res.out}: {res.shards} shard(s), "
                  f"{res.shards_written} written in {res.seconds:.1f} s{resumed}", highlight=False)


@app.command()
def curves(
    run: Annotated[Path, typer.Argument(help="run directory")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="image file (default RUN/curves.png)")] = None,
    smoothing: Annotated[float, typer.Option("--smoothing", help="EMA weight for the loss, in [0, 1)")] = 0.8,
) -> None:
    """Draw a run's training curves (loss, lr, grad norm, throughput, eval metrics) as a PNG."""
    from fmkit.engine.curves import plot_curves

    path = plot_curves(run, out, smoothing=smoothing)
    console.print(f"wrote {path}", highlight=False)


@app.command()
def plugins(
    kind: Annotated[Optional[str], typer.Option("--kind", "-k", help="only this kind (models, datasets, ...)")] = None,
    options: Annotated[bool, typer.Option("--options", help="also each component's options: type and default")]
    = False,
) -> None:
    """Every registered component, its kind and the plugin that gave it (with --options, its options)."""
    from fmkit.app.hookspecs import KINDS
    from fmkit.app.registry import describe_options

    reg = _registry()
    kinds = KINDS
    if kind is not None:
        singular = {k[:-1]: k for k in KINDS}
        if kind not in KINDS and kind not in singular:
            import difflib

            close = difflib.get_close_matches(kind, KINDS, n=1)
            raise FmkitError(f"unknown component kind {kind!r}", where="--kind",
                             fix=(f"did you mean {close[0]!r}? " if close else "") + f"use one of: {', '.join(KINDS)}")
        kinds = (singular.get(kind, kind),)
    table = Table(title="fmkit components")
    for col in ("kind", "name", "plugin", "description") + (("options",) if options else ()):
        table.add_column(col)
    for k in kinds:
        for name, e in sorted(reg.entries(k).items()):
            row = [k[:-1], name, e.plugin, e.description]
            if options:
                row.append(describe_options(e.options) if e.options is not None else "(none)")
            table.add_row(*row)
    console.print(table)
    rec = reg.recipes()
    if rec and kind is None:
        console.print("recipes shipped by plugins: " + ", ".join(f"{k} ({p})" for k, (_, p) in sorted(rec.items())))


@recipe_app.command("validate")
def recipe_validate(recipe: Annotated[Path, typer.Argument()], set_: SetOpt = None) -> None:
    """Check a recipe (structure and every component's options)."""
    from fmkit.app.recipe import load_recipe

    load_recipe(recipe, set_ or [])
    console.print(f"[green]ok[/]: {recipe} is a valid recipe")


@recipe_app.command("show")
def recipe_show(recipe: Annotated[Path, typer.Argument()], set_: SetOpt = None) -> None:
    """Print the resolved recipe, every default filled in."""
    from fmkit.app.recipe import load_recipe

    console.print(load_recipe(recipe, set_ or []).to_yaml(), markup=False, highlight=False)


@recipe_app.command("list")
def recipe_list() -> None:
    """Recipes shipped by installed plugins."""
    for name, (p, plugin) in sorted(_registry().recipes().items()):
        console.print(f"{name}\t{p}\t({plugin})")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run() -> None:
    """Console-script entry point with user-friendly errors."""
    old = {}
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (a scheduler) and SIGHUP (a closed terminal) end any command as Ctrl-C does: a message
        # and exit 130, not a silent -15; `fmkit train` installs its own handlers, which save first
        old = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        _run()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _run() -> None:
    try:
        _registry_commands()
        rv = app(standalone_mode=False, prog_name="fmkit")  # also under `python -m fmkit`
        # without standalone mode, typer *returns* the code of an Exit (130 for a Ctrl-C it caught)
        if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
            if rv == 130:
                err_console.print("[bold red]interrupted[/]")
            sys.exit(rv)
    except FmkitError as exc:
        if _STATE["debug"]:
            raise
        from rich.markup import escape  # user text may hold [brackets]; never parse it as markup

        from fmkit.engine.stopping import TrainingInterrupted

        if isinstance(exc, TrainingInterrupted) and os.environ.get("RANK", "0") != "0":
            sys.exit(exc.exit_code)  # every rank stopped at the same step: rank 0 says so, once
        label = "[bold yellow]stopped:[/]" if isinstance(exc, TrainingInterrupted) else "[bold red]error:[/]"
        err_console.print(f"{label} {escape(exc.render())}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        sys.exit(130)
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", getattr(exc, "code", 0))
        sys.exit(code if isinstance(code, int) else 0)
    except Exception as exc:  # usage errors and genuine bugs
        # usage errors: click's, or the copy of click that recent typer vendors (no `click` module then)
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        if type(exc).__name__ == "Abort":
            # click turns EOFError and KeyboardInterrupt raised anywhere into a silent Abort; fmkit has
            # no prompts, so an EOFError is a file that ended early (a truncated data file, say)
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, KeyboardInterrupt):
                err_console.print("[bold red]interrupted[/]")
                sys.exit(130)
            if not isinstance(cause, EOFError):
                sys.exit(1)
            if _STATE["debug"]:
                raise cause
            from rich.markup import escape

            err_console.print(f"[bold red]error:[/] a file ended unexpectedly ({escape(f'EOFError: {cause}')})\n"
                              "  fix:   a data or checkpoint file is probably truncated: check the files the recipe "
                              "reads (rerun with `fmkit --debug ...` to see which one)", highlight=False, soft_wrap=True)
            sys.exit(1)
        if _STATE["debug"]:
            raise
        from rich.markup import escape

        culprit = _plugin_frame(exc)
        if culprit is not None:  # the innermost frame of fmkit or a plugin is the plugin's: not our bug
            plugin, place = culprit
            err_console.print(f"[bold red]error in plugin {escape(repr(plugin))}[/] ({escape(place)}): "
                              f"{escape(f'{type(exc).__name__}: {exc}')}\n"
                              "  fix:   this is a bug in that plugin or its use; report it to its authors (fmkit is "
                              "not the cause); `fmkit --debug ...` shows the traceback",
                              highlight=False, soft_wrap=True)
            sys.exit(1)
        err_console.print(f"[bold red]internal error:[/] {escape(f'{type(exc).__name__}: {exc}')}\n"
                          "  rerun with `fmkit --debug ...` for the traceback, and please report it", highlight=False,
                          soft_wrap=True)
        sys.exit(1)


def _plugin_frame(exc: BaseException) -> tuple[str, str] | None:
    """(plugin name, ``pkg/file.py:LINE, in FUNC``) when the innermost traceback frame that belongs to
    fmkit or to a registered plugin is the plugin's; None when it is fmkit's (or nobody's). Frames
    of torch, numpy, the standard library and other packages are passed over: a plugin's forward
    failing inside torch is the plugin's."""
    import traceback

    try:
        packages = _registry().plugin_packages()
    except Exception:  # a registry that cannot even load blames nobody
        return None
    for frame, lineno in reversed(list(traceback.walk_tb(exc.__traceback__))):
        root = str(frame.f_globals.get("__name__", "")).split(".")[0]
        if root == "fmkit":
            return None
        if root in packages:
            return packages[root], f"{_short_file(frame.f_code.co_filename, root)}:{lineno}, in {frame.f_code.co_name}"
    return None


def _short_file(filename: str, root: str) -> str:
    """``filename`` from its top-level package on (``fmkit_ring/net.py``)."""
    top = sys.modules.get(root)
    base = getattr(top, "__file__", None)
    if base:
        base_dir = Path(base).parent.parent if Path(base).name == "__init__.py" else Path(base).parent
        try:
            return Path(filename).relative_to(base_dir).as_posix()
        except ValueError:
            pass
    return Path(filename).name


_commands_added = False


def _registry_commands() -> None:
    global _commands_added
    if not _commands_added:
        _commands_added = True
        _registry().add_commands(app)


if __name__ == "__main__":
    run()
