"""``fmkit sample``, ``evaluate`` and ``reflow``: what a trained run generates, and how good it is."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from fmkit.app.cli.common import (MAX_SAMPLES, CheckpointOpt, ClassOpt, GuidanceOpt, PerClassOpt, SetOpt, app, console,
                                  print_tables)
from fmkit.app.classes import requested_classes
from fmkit.app.inference import (
    build_solver,
    check_finite,
    guided,
    inference_device,
    load_for_inference,
    pick_checkpoint,
    sample_dir,
    sample_loaded,
    samples_home,
)
from fmkit.errors import FmkitError

SourceArg = Annotated[str, typer.Argument(metavar="RUN", help="run directory, model folder (fmkit export) or "
                                          "hf://ORG/NAME[@REVISION] (Hugging Face Hub, through its cache)")]


# A "\f" in a command's docstring ends its --help text (click): the Args: after it are for readers of the code.
@app.command()
def sample(
    run: SourceArg,
    n: Annotated[Optional[int], typer.Option("-n", "--num", min=1, max=MAX_SAMPLES, help="number of samples "
                                             "(generated in chunks of eval.chunk_size) [default: 1000]")] = None,
    class_: ClassOpt = None,
    per_class: PerClassOpt = None,
    solver: Annotated[Optional[str], typer.Option(help="solver name (default: the recipe's)")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="solver steps (fixed-step solvers)")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="relative tolerance (adaptive solvers)")] = None,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="absolute tolerance (adaptive solvers)")] = None,
    out: Annotated[Optional[str], typer.Option(help="output folder name inside RUN/samples (./samples for a model "
                                               "folder or hf://; default: a new cli-<time> folder); an existing "
                                               "non-empty one needs --overwrite")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="write into an existing --out folder, replacing "
                                            "files of the same names")] = False,
    seed: int = 0,
    guidance: GuidanceOpt = None,
    checkpoint: CheckpointOpt = None,
    set_: SetOpt = None,
) -> None:
    """Generate samples from a trained run, a model folder or hf://, and write them: samples.safetensors (the
    solver's raw values) and the files of the recipe's eval.writers (e.g. an image grid, one row per class).\f

    Args:
        run: RUN, a run directory, a model folder (``fmkit export``) or ``hf://ORG/NAME[@REVISION]``.
        n: ``--num``, the number of samples; None: 1000, or K x classes with ``--per-class K``.
        class_: ``--class``, the classes to sample (shared evenly, in class order); None: the data's.
        per_class: ``--per-class K``, K samples of every class, in class order.
        solver: ``--solver``, a solver name; None: the recipe's.
        steps: ``--steps`` of a fixed-step solver; None: the recipe's.
        rtol: ``--rtol`` of an adaptive solver; None: the recipe's.
        atol: ``--atol`` of an adaptive solver; None: the recipe's.
        out: ``--out``, the folder's name inside RUN/samples; None: a new ``cli-<time>`` folder.
        overwrite: ``--overwrite``, write into an existing non-empty ``--out`` folder.
        seed: ``--seed`` of the samples.
        guidance: ``--guidance``, the classifier-free guidance scale; None: the recipe's.
        checkpoint: ``--checkpoint``, an older checkpoint's step or folder; None: the newest.
        set_: ``--set key.path=value`` recipe overrides.
    """
    import torch

    from fmkit.engine.evaluation import each
    from fmkit.engine.files import disk_full, save_tensors
    from fmkit.errors import OutputError
    from fmkit.flow.state import flat_tensors

    loaded = load_for_inference(run, set_, checkpoint)
    rec, comps = loaded.recipe, loaded.components
    n, cond = requested_classes(class_, per_class, n, comps.dataset.info.num_cond_classes, 1000, MAX_SAMPLES)
    dev = inference_device(rec)
    s, _ = build_solver(rec, solver, steps, rtol, atol)
    out_dir = sample_dir(samples_home(run), out, overwrite)
    t0 = time.perf_counter()
    try:
        samples = sample_loaded(loaded, n, s, dev, seed, guidance, cond)
        check_finite(samples)
    except BaseException as exc:
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed run leaves no empty samples/cli-* folder behind
        if isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc)):
            raise FmkitError(f"ran out of memory while sampling chunks of {rec.eval.chunk_size} on {dev}",
                             where="eval.chunk_size",
                             fix=f"sample in smaller chunks: --set eval.chunk_size={max(1, rec.eval.chunk_size // 4)}"
                             ) from None
        raise
    dt = time.perf_counter() - t0
    files = [out_dir / "samples.safetensors"]
    step = loaded.step
    try:
        save_tensors(flat_tensors(samples), files[0])
        failed = each(comps.writers, lambda _, w: files.extend(w(samples, out_dir, comps.dataset, step)))
        if isinstance(failed, OSError):
            raise failed
    except OSError as exc:  # a full disk: take back what this command wrote, and its folder
        for f in files:
            Path(f).unlink(missing_ok=True)
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        if not disk_full(exc):
            raise
        raise OutputError("no space left on the device to write the samples; nothing of them was kept",
                          where=str(exc.filename or out_dir), fix="free space on that disk and sample again") from None
    console.print(f"{n} samples in {dt:.1f} s from {loaded.label}; wrote:")
    for f in files:
        console.print(f"  {f}")
    if failed is not None:  # after the files the other writers made are listed
        raise failed

@app.command()
def evaluate(
    run: SourceArg,
    n: Annotated[Optional[int], typer.Option("-n", "--num", min=1, help="samples (default: eval.num_samples)")] = None,
    class_: ClassOpt = None,
    per_class: PerClassOpt = None,
    solver: Annotated[Optional[str], typer.Option(help="solver name (default: the recipe's)")] = None,
    steps: Annotated[Optional[int], typer.Option(min=1, help="solver steps (fixed-step solvers)")] = None,
    rtol: Annotated[Optional[float], typer.Option(min=0.0, help="relative tolerance (adaptive solvers)")] = None,
    atol: Annotated[Optional[float], typer.Option(min=0.0, help="absolute tolerance (adaptive solvers)")] = None,
    likelihood: Annotated[bool, typer.Option("--likelihood", help="also NLL / bits per dim of data (see "
                                             "--estimator)")] = False,
    likelihood_n: Annotated[int, typer.Option(min=1, help="data points for the likelihood")] = 500,
    estimator: Annotated[str, typer.Option(help="divergence (--likelihood): auto (exact up to 32 dims per "
                                                "example, else hutchinson), exact or hutchinson")] = "auto",
    seed: int = 0,
    guidance: GuidanceOpt = None,
    checkpoint: CheckpointOpt = None,
    set_: SetOpt = None,
) -> None:
    """Sample from a run (or a model folder, hf://) and print its metrics (and optionally the test log-likelihood).\f

    Args:
        run: RUN, a run directory, a model folder (``fmkit export``) or ``hf://ORG/NAME[@REVISION]``.
        n: ``--num``, the number of samples for the metrics; None: the recipe's ``eval.num_samples``, or
            K x classes with ``--per-class K``.
        class_: ``--class``, the classes to sample (shared evenly); None: the data's.
        per_class: ``--per-class K``, K samples of every class.
        solver: ``--solver``, a solver name; None: the recipe's.
        steps: ``--steps`` of a fixed-step solver; None: the recipe's.
        rtol: ``--rtol`` of an adaptive solver; None: the recipe's.
        atol: ``--atol`` of an adaptive solver; None: the recipe's.
        likelihood: ``--likelihood``, also the NLL and bits/dim of held-out data.
        likelihood_n: ``--likelihood-n``, the data points scored for the likelihood.
        estimator: ``--estimator`` of the divergence: auto, exact or hutchinson.
        seed: ``--seed`` of the samples and the likelihood's data and probes.
        guidance: ``--guidance``, the classifier-free guidance scale of the samples; None: the recipe's.
        checkpoint: ``--checkpoint``, an older checkpoint's step or folder; None: the newest.
        set_: ``--set key.path=value`` recipe overrides.
    """
    import torch

    from fmkit.engine.evaluation import sample_in_chunks, score
    from fmkit.flow.likelihood import ESTIMATORS

    if estimator not in ESTIMATORS:  # before any sampling: a typo must not cost a whole evaluation
        raise FmkitError(f"unknown divergence estimator {estimator!r}", where="--estimator",
                         fix=f"use one of: {', '.join(ESTIMATORS)}")
    loaded = load_for_inference(run, set_, checkpoint)
    rec, comps = loaded.recipe, loaded.components
    dev = inference_device(rec)
    s, about = build_solver(rec, solver, steps, rtol, atol)
    bare = comps.model.to(dev).eval()
    model, scale = guided(bare, rec, comps.dataset.info.null_class, guidance)
    if scale is not None:
        about += f", guidance {scale:g}"
    num, cond = requested_classes(class_, per_class, n, comps.dataset.info.num_cond_classes, rec.eval.num_samples,
                                  MAX_SAMPLES)
    dequant, protocol = None, None
    if likelihood:  # before any sampling: data whose likelihood means nothing must not cost an evaluation
        from fmkit.flow.likelihood import declared_likelihood

        categorical = [k for k, f in comps.dataset.info.fields.items() if f.categorical]
        if categorical:
            raise FmkitError(f"log-likelihood is not available for this run: field(s) {categorical} are categorical",
                             where="--likelihood", fix="the likelihood covers continuous fields only")
        dequant = declared_likelihood(comps.dataset.info.meta, f"dataset {rec.data.name!r}")
    rows: list[tuple[str, str]] = []
    failed: BaseException | None = None
    if comps.metrics:
        torch.manual_seed(seed)
        samples = sample_in_chunks(model, comps.path, comps.source, s, comps.dataset, num, rec.eval.chunk_size, dev,
                                   seed, cond=cond)
        # the trainer's scoring: a metric returning a non-number is named; one that fails spares the others
        results, failed = score(comps.metrics, samples, comps.dataset)
        rows += [(k, f"{v:.4f}") for k, v in results.items()]
    if likelihood:
        from fmkit.flow.likelihood import data_log_likelihood
        from fmkit.flow.sampling import model_velocity
        from fmkit.flow.state import count_dims, fields, to_device

        torch.manual_seed(seed)
        ref = to_device(comps.dataset.reference(likelihood_n, seed=seed + 1), dev)
        if solver or any(v is not None for v in (steps, rtol, atol)):
            lsolver, labout = s, about
        else:  # the likelihood needs an accurate solve, whatever the recipe samples with
            lsolver, labout = build_solver(rec, "dopri5", None, 1e-5, 1e-5)
        # the model's own density: its unguided field (guidance shapes samples, it has no density of its own)
        field_of = "the model's unguided field" + (", conditional on each example's label" if "cond" in ref else "")
        protocol = f"{field_of}; " + (dequant.describe() if dequant is not None else "continuous data, as it is")
        try:
            with console.status(f"log-likelihood of {likelihood_n} examples ({estimator} divergence, {labout})"):
                res = data_log_likelihood(model_velocity(bare, comps.path, ref.get("mask"), ref.get("cond")), ref,
                                          comps.source, lsolver, dequant, estimator=estimator,
                                          generator=torch.Generator().manual_seed(seed + 2))
        except (NotImplementedError, ValueError) as exc:
            raise FmkitError(f"log-likelihood is not available for this run: {exc}",
                             fix="use a source with a closed-form density and continuous fields only") from None
        dims = sum(count_dims(v, ref.get("mask")) for v in fields(ref).values())
        nll = res.bits_per_dim.double().cpu() * dims.cpu() * math.log(2.0)  # -log p, plus the dequantisation's term
        rows.append(("nll (nats)", f"{nll.mean().item():.4f}"))
        rows.append(("bits/dim", f"{res.bits_per_dim.mean().item():.4f}"))
        rows.append(("likelihood nfe", str(res.nfe)))
        rows.append(("likelihood solver", labout))
    if not rows and failed is not None:  # its metrics all failed: say why, not that there are none
        raise failed
    if not rows:
        raise FmkitError("the run's recipe lists no metrics", where="eval.metrics",
                         fix="add e.g. `eval: {metrics: [{name: w2}]}` or pass --likelihood")
    title = f"{run} @ {loaded.label}" + (f" ({num} samples, {about})" if comps.metrics else "") + \
        (f" — {loaded.stopped}" if loaded.stopped else "")
    print_tables(title, rows, comps.metrics.values())
    if protocol is not None:
        console.print(f"likelihood protocol: {protocol}", highlight=False, soft_wrap=True)
    if failed is not None:  # after the rows the other metrics gave are shown
        raise failed


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
    """Draw (x0, x1 = ODE(x0)) pairs from a trained run for reflow / distillation (docs/fewstep.md).\f

    Args:
        run: RUN, the teacher's run directory.
        pairs: ``--pairs``, the number of pairs in the finished folder.
        out: ``--out``, the pairs folder (new, or one this command began: it resumes).
        solver: ``--solver``, a solver name; None: the recipe's.
        steps: ``--steps`` of a fixed-step solver; None: the recipe's.
        rtol: ``--rtol`` of an adaptive solver; None: the recipe's.
        atol: ``--atol`` of an adaptive solver; None: the recipe's.
        ema: ``--ema/--no-ema``, the teacher's EMA weights or its raw ones.
        shard_size: ``--shard-size``, pairs per safetensors shard (the unit of resuming).
        seed: ``--seed`` of the pairs.
        checkpoint: ``--checkpoint``, an older checkpoint's step or folder; None: the newest.
        set_: ``--set key.path=value`` recipe overrides.
    """
    from fmkit.app.reflow import reflow_run
    from fmkit.app.run import load_run_recipe

    rec = load_run_recipe(run, set_ or [])
    s, about = build_solver(rec, solver, steps, rtol, atol)
    ck = pick_checkpoint(run, checkpoint)
    res = reflow_run(run, out, pairs, solver=s, solver_about=about, checkpoint=ck, use_ema=ema, seed=seed,
                     shard_size=shard_size, overrides=set_ or [])
    resumed = f" ({res.shards - res.shards_written} shard(s) were there already)" if res.shards_written < res.shards \
        else ""
    console.print(f"{res.num_pairs} pairs from {ck.name} ({about}) in {res.out}: {res.shards} shard(s), "
                  f"{res.shards_written} written in {res.seconds:.1f} s{resumed}", highlight=False)
