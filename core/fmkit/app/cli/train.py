"""``fmkit train``: a recipe to a run directory, on one process or under torchrun (DDP)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from fmkit.app.cli.common import _STATE, SetOpt, app, console, err_console, print_eval
from fmkit.engine.callbacks import Callback, TrainerView
from fmkit.errors import FmkitError

if TYPE_CHECKING:
    from fmkit.app.recipe import Recipe
    from fmkit.engine.trainer import Trainer


# A "\f" in a command's docstring ends its --help text (click): the Args: after it are for readers of the code.
@app.command()
def train(
    ctx: typer.Context,
    recipe: Annotated[Optional[Path], typer.Argument(help="recipe YAML file")] = None,
    set_: SetOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="run directory (default runs/<name>-<time>)")
                   ] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="continue the run in this directory")] = None,
    nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", min=1, help="processes (GPUs) on this node; "
                                                ">1 hands off to torch.distributed.run (DDP)")] = 1,
    checkpoint: Annotated[Optional[str], typer.Option(
        "--checkpoint", "-c", metavar="STEP|DIR", help="with --resume: continue from this older checkpoint (its "
        "step or folder); the newer ones are moved to checkpoints/abandoned-STEP/")] = None,
) -> None:
    """Train a model from a recipe (or resume a run).\f

    Args:
        ctx: the command's context (replayed to every process under ``--nproc-per-node``).
        recipe: RECIPE, the recipe YAML file; with ``--resume`` the run's own recipe is used instead.
        set_: ``--set key.path=value`` recipe overrides.
        out: ``--out``, the run directory; None: ``runs/<name>-<time>``.
        resume: ``--resume``, the run directory to continue.
        nproc_per_node: ``--nproc-per-node``, processes on this node; > 1 hands off to torchrun (DDP).
        checkpoint: ``--checkpoint`` with ``--resume``, an older checkpoint's step or folder to continue from.
    """
    if checkpoint is not None and resume is None:
        raise FmkitError("--checkpoint picks the checkpoint a resumed run continues from", where="--checkpoint",
                         fix="add --resume RUN (fmkit train --resume RUN --checkpoint STEP)")
    if nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
        launch_torchrun(ctx, nproc_per_node, recipe, resume, set_)
        return
    from fmkit.engine.distributed import init_from_env

    rec = _recipe(recipe, resume, set_)
    dist = init_from_env(device=rec.trainer.device)  # gloo for a CPU recipe, also on a GPU host
    if resume is not None:
        run_dir, trainer = resume, _resumed_trainer(rec, dist, resume, set_)
    else:
        run_dir, trainer = _new_trainer(rec, dist, out)
    if dist.rank == 0 and rec.cpu_alternative and trainer.device.type == "cpu" and rec.trainer.device == "auto":
        console.print(f"[yellow]note:[/] no GPU here: this recipe is sized for one and runs very slowly on a CPU; "
                      f"on a CPU train `fmkit train {rec.cpu_alternative}` instead", highlight=False)
    start = _resume_from(run_dir, checkpoint, dist) if resume is not None else False
    t0 = time.perf_counter()
    try:
        trainer.fit(resume=start)
    finally:  # finished, stopped by Ctrl-C or failed: the picture of what was trained so far
        if dist.rank == 0:
            write_curves(run_dir)
    if dist.rank == 0:
        from fmkit.engine.stopping import stop_record

        stop = stop_record(trainer.step, trainer.opts.steps, trainer.stopped_early)
        early = f" ({stop['message']})" if stop is not None else ""
        console.print(f"trained to step {trainer.step}{early} in {time.perf_counter() - t0:.1f} s; "
                      f"checkpoints in {run_dir / 'checkpoints'}", highlight=False)
        print_eval(run_dir, trainer.evaluator.metrics.values())


class AnnounceRun(Callback):
    """Prints the run directory, device and parameter count once training really starts (not before a
    refused resume, say); ``fmkit train`` gives it to rank 0."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def on_train_start(self, trainer: TrainerView) -> None:
        import torch

        n = torch.get_num_threads()
        threads = f" ({n} thread{'s' if n > 1 else ''})" if torch.device(trainer.device).type == "cpu" else ""
        console.print(f"run directory: [bold]{self.run_dir}[/]  device: {trainer.device}{threads}  "
                      f"params: {sum(p.numel() for p in trainer.model.parameters()):,}")


class RecordResume(Callback):
    """Records a resume's ``--set`` overrides in the run's ``lineage.json`` once training starts, i.e. only
    after the checkpoint has loaded into the overridden recipe (a refused resume records nothing). The run's
    ``recipe.yaml`` stays the recipe it was started from: ``sample`` and ``evaluate`` read it."""

    def __init__(self, run_dir: Path, overrides: list[str]) -> None:
        self.run_dir, self.overrides = run_dir, overrides

    def on_train_start(self, trainer: TrainerView) -> None:
        from fmkit.engine.lineage import record_resume

        record_resume(self.run_dir, trainer.step, self.overrides)


def _recipe(recipe: Optional[Path], resume: Optional[Path], set_: Optional[list[str]], quiet: bool = False) -> Recipe:
    """The recipe to train: the resumed run's own with the overrides of its earlier resumes and then ``--set``
    (``quiet``: no note that ``recipe`` is not used), else the recipe file's."""
    from fmkit.app.recipe import load_recipe
    from fmkit.app.run import RECIPE_FILE, load_run_recipe
    from fmkit.engine.lineage import resume_overrides

    if resume is not None:
        if recipe is not None and not quiet:
            console.print(f"[yellow]note:[/] resuming uses {resume / RECIPE_FILE}; {recipe} is ignored")
        return load_run_recipe(resume, resume_overrides(resume) + (set_ or []))
    if recipe is None:
        raise FmkitError("no recipe given", where="fmkit train", fix="run `fmkit train recipes/toy_moons.yaml`")
    return load_recipe(recipe, set_ or [])


def _new_trainer(rec: Recipe, dist: Any, out: Optional[Path]) -> tuple[Path, Trainer]:
    """A fresh run's directory and trainer; the directory is made only once data, model and trainer are
    built (a failure there leaves none behind), and every rank gets rank 0's."""
    import fmkit.app.run as run

    run_dir = Path(on_rank0(dist, lambda: run.run_dir_name(rec, out)))
    trainer = run.build_trainer(rec, run_dir, callbacks=[AnnounceRun(run_dir)] if dist.rank == 0 else [])
    on_rank0(dist, lambda: run.new_run_dir(rec, run_dir))
    return run_dir, trainer


def _resumed_trainer(rec: Recipe, dist: Any, run_dir: Path, set_: Optional[list[str]]) -> Trainer:
    """The trainer of the run in ``run_dir``; with ``--set`` overrides, rank 0 records them in its lineage."""
    from fmkit.app.run import build_trainer

    callbacks: list[Callback] = [AnnounceRun(run_dir)] if dist.rank == 0 else []
    if dist.rank == 0 and set_:
        callbacks.append(RecordResume(run_dir, list(set_)))
    return build_trainer(rec, run_dir, callbacks=callbacks)


def _resume_from(run_dir: Path, checkpoint: Optional[str], dist: Any) -> bool | Path:
    """What ``fit(resume=...)`` gets: the ``--checkpoint`` to continue from (rank 0 moves the newer ones out
    of the way), else True; False for a run killed before its first checkpoint, which trains from step 0."""
    from fmkit.app.inference import pick_checkpoint
    from fmkit.engine.checkpoint import has_checkpoint, set_aside_newer

    if checkpoint is not None:  # every rank resumes from it
        start = pick_checkpoint(run_dir, checkpoint)
        moved = set_aside_newer(run_dir / "checkpoints", start) if dist.rank == 0 else []
        if moved:
            console.print(f"[yellow]note:[/] continuing from {start.name}; the newer checkpoints "
                          f"{', '.join(p.name for p in moved)} are kept in {moved[0].parent}", highlight=False)
        return start
    if not has_checkpoint(run_dir):  # stopped before its first checkpoint (killed early): nothing to resume
        console.print(f"[yellow]note:[/] {run_dir} has no checkpoint yet; training it from step 0")
        return False
    return True


def launch_torchrun(ctx: typer.Context, n: int, recipe: Optional[Path], resume: Optional[Path],
                     set_: Optional[list[str]]) -> None:
    """Re-run this very command under ``torch.distributed.run`` with ``n`` processes on this node
    (``--standalone``: a private rendezvous on a free port). Multi-node: call torchrun yourself
    (docs/scale.md); inside torchrun, ``--nproc-per-node`` is ignored.

    Args:
        ctx: the ``fmkit train`` command's context, whose parsed options are replayed to every process.
        n: processes on this node (one per GPU).
        recipe: the recipe file, checked here once before any process starts (the run's own with ``resume``).
        resume: the run directory to continue; None for a new run.
        set_: the ``--set KEY=VALUE`` overrides.
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # check the recipe once here, so a mistake is reported once and not by every process
    rec = _recipe(recipe, resume, set_, quiet=True)
    from fmkit.engine.options import BatchSizes
    from fmkit.engine.setup import pick_device

    pick_device(rec.trainer.device)  # a device this machine lacks: said once here, not by every process
    BatchSizes.of(rec.trainer, n)  # a batch the n processes cannot share, likewise
    args = ["--standalone", f"--nproc-per-node={n}", "-m", "fmkit"] + (["--debug"] if _STATE["debug"] else [])
    args += replay_args(ctx, skip={"nproc_per_node"})
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


def on_rank0(dist, fn):
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


def replay_args(ctx: typer.Context, skip: set[str]) -> list[str]:
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


def write_curves(run_dir: Path) -> None:
    """``run_dir/curves.png`` from its metrics, if it has any; a failure to draw is a note, never
    the run's error (the exception in flight, a Ctrl-C say, is the one that counts)."""
    from fmkit.engine.curves import plot_curves

    try:
        plot_curves(run_dir)
    except FmkitError:  # no metrics.csv or nothing logged yet (stopped before its first log step): no picture
        pass
    except Exception as exc:  # noqa: BLE001 - a picture is never worth losing the run's own outcome
        console.print(f"[yellow]note:[/] could not draw {run_dir / 'curves.png'}: {type(exc).__name__}: {exc}")
