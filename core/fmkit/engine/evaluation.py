"""Evaluation of a model: samples drawn in seeded chunks (split over DDP ranks), under guidance when
``eval.guidance_scale`` asks, scored by the metrics and turned into files by the writers, with a record of
the last evaluation that finished. :class:`Evaluator` holds it all for a Trainer."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmkit.engine.callbacks import Metric, Writer
from fmkit.engine.distributed import SAMPLING_STREAM, DistInfo, all_gather_objects, fold_seed, seed_generators
from fmkit.engine.files import disk_full, save_tensors, write_atomic_text
from fmkit.engine.hints import FixHints
from fmkit.engine.options import EvalOptions
from fmkit.errors import ContractError, FmkitError, OutputError, TrainingError
from fmkit.flow.batching import cpu_call_size
from fmkit.flow.data import Dataset
from fmkit.flow.guidance import NULL_CLASS_FIX, with_guidance
from fmkit.flow.paths import StatePath
from fmkit.flow.sampling import generate
from fmkit.flow.solvers import Solver, check_continuous_only
from fmkit.flow.sources import StateSource
from fmkit.flow.state import State, flat_tensors, to_device

#: the step of the last evaluation that ran to its end, so a resume can finish one a signal ended
EVALUATED_FILE = "evaluated.json"


@torch.no_grad()
def sample_in_chunks(model: nn.Module, path: StatePath, source: StateSource, solver: Solver, dataset: Dataset,
                     n: int, chunk: int, device: torch.device, seed: int = 0, dist: DistInfo | None = None, *,
                     cond: torch.Tensor | None = None) -> State:
    """Generate ``n`` samples in chunks of ``chunk``; returns CPU tensors.

    Chunk k draws from its own random stream (seed, k), so the samples do not depend on how the
    chunks are spread: with ``dist`` (a DDP run; every rank calls this), rank r generates chunks
    r, r + world, ... and all ranks receive all ``n`` samples (all_gather). ``cond`` chooses the
    classes (``fmkit sample --class``): chunk k's templates come from ``dataset.class_template``.

    Args:
        model: the velocity field ``model(x_t, t, cond)``, already in eval mode and on ``device``.
        path: the probability path the model was trained on (turns its output into a velocity).
        source: the noise distribution x0 is drawn from.
        solver: the ODE / jump solver that integrates from t = 0 to 1.
        dataset: gives each chunk's template (shapes, masks and conditions of ``m`` examples).
        n: number of samples in all (over all ranks).
        chunk: samples per solver call (``eval.chunk_size``): bounds the memory of one call.
        device: where the samples are generated; on a CPU the model is called on slices of the chunk
            (:func:`~fmkit.flow.batching.cpu_call_size`: activations the allocator reuses, not fresh pages).
        seed: base seed of the per-chunk random streams and templates.
        dist: the DDP ranks to spread the chunks over; None for one process.
        cond: the class of every sample [n]; None: the classes of the data's templates.

    Returns:
        The ``n`` samples, a State of CPU tensors [n, ...] in chunk order; fields whose size varies
        between chunks (atoms per molecule) are zero-padded to the largest.
    """
    if cond is not None and len(cond) != n:
        raise ValueError(f"cond holds {len(cond)} classes for {n} samples")
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    starts = list(range(0, n, chunk))
    parts: dict[int, State] = {}
    for k in range(rank, len(starts), world):
        m = min(chunk, n - starts[k])
        seed_generators(fold_seed(seed, SAMPLING_STREAM, k), device)
        template = dataset.template(m, seed=seed + starts[k]) if cond is None else \
            dataset.class_template(cond[starts[k]:starts[k] + m].cpu(), seed=seed + starts[k])
        template = to_device(template, device)
        sol = generate(model, path, source, solver, template, call_size=cpu_call_size(template, device))
        parts[k] = to_device(sol.x, "cpu")
    if world > 1:
        parts = {k: v for got in all_gather_objects(parts, world) for k, v in got.items()}
    return _concat([parts[k] for k in range(len(starts))])


def _concat(parts: list[State]) -> State:
    """Chunks joined along the batch; sizes that vary between chunks (atoms per molecule: dim 1 of
    ``[B,N,3]``, dims 1 and 2 of a pair field ``[B,N,N]``) are zero-padded, i.e. masked out."""
    out: State = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        if isinstance(vals[0], Mapping):  # the per-field masks
            out[k] = _concat(vals)  # type: ignore[assignment]
            continue
        top = [max(v.shape[d] for v in vals) for d in range(1, vals[0].dim())]
        vals = [v if list(v.shape[1:]) == top else torch.nn.functional.pad(v, _pads(v, top)) for v in vals]
        out[k] = torch.cat(vals)
    return out


def _pads(v: torch.Tensor, top: list[int]) -> list[int]:
    """``F.pad``'s list (last dim first) that grows each dim >= 1 of ``v`` to ``top[dim - 1]``."""
    return [p for d in reversed(range(1, v.dim())) for p in (0, top[d - 1] - v.shape[d])]


def each(components: Mapping[str, Any], call: Callable[[str, Any], Any]) -> BaseException | None:
    """``call(name, component)`` for every metric or writer; one that raises does not stop the others
    (a writer that needs a missing library must not cost the XYZ file or the metrics beside it).
    Returns the first exception, for the caller to raise once everything else is done."""
    first: BaseException | None = None
    for name, component in components.items():
        try:
            call(name, component)
        except Exception as exc:  # noqa: BLE001 - raised again by the caller
            first = first or exc
    return first


def non_finite_samples(samples: State) -> str | None:
    """``"N of M samples hold NaN/Inf in field 'x'"`` for the first floating-point field (not mask or
    cond) that holds any, else None."""
    for k, v in samples.items():
        if k in ("mask", "cond") or not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.dim() == 0:
            continue
        bad = (~v.isfinite()).reshape(v.shape[0], -1).any(1)
        if bad.any():
            return f"{int(bad.sum())} of {v.shape[0]} samples hold NaN/Inf in field {k!r}"
    return None


def score(metrics: Mapping[str, Metric], samples: State, dataset: Dataset) -> tuple[dict[str, float],
                                                                                  BaseException | None]:
    """Every metric on ``samples``: ``({name: value}, the first metric's exception or None)``. A metric
    that fails on samples holding NaN/Inf (a diverged model's) is named with that cause."""
    results: dict[str, float] = {}

    def one(name: str, metric: Metric) -> None:
        try:
            values = metric(samples, dataset)
        except FmkitError:
            raise
        except Exception as exc:
            bad = non_finite_samples(samples)
            if bad is None:
                raise  # a bug of the metric (the CLI names its plugin)
            raise FmkitError(f"metric {name!r} failed: {bad} ({type(exc).__name__}: {exc})",
                             where=f"metric {name!r} (eval.metrics)",
                             fix="the model diverged: look at its loss (`fmkit curves RUN`), evaluate an earlier "
                                 "checkpoint (--checkpoint STEP), or train again with a lower trainer.lr and "
                                 "trainer.grad_clip set") from None
        for k, v in values.items():
            try:
                results[k] = float(v)
            except (TypeError, ValueError):
                raise ContractError(f"metric {name!r} returned {k!r} = {type(v).__name__} "
                                    f"{tuple(getattr(v, 'shape', ()))}, not a number", where=f"metric {name!r}",
                                    fix="a metric returns {name: float} (a Python float or a one-element tensor)"
                                    ) from None

    return results, each(metrics, one)


def save_samples(samples: State, out: Path, step: int, fix: str = "free space on that disk") -> Path:
    """``samples`` as ``out/samples_stepNNNNNNN.safetensors`` (before any metric or writer, which may fail).
    A failed write (a full disk) leaves no partial file and no samples folder it made empty, and raises
    :class:`OutputError` ending in ``fix``."""
    made = not out.exists()
    path = out / f"samples_step{step:07d}.safetensors"
    try:
        out.mkdir(parents=True, exist_ok=True)
        save_tensors(flat_tensors(samples), path)
    except OSError as exc:
        path.unlink(missing_ok=True)
        if made and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        cause = "no space left on the device" if disk_full(exc) else (exc.strerror or str(exc))
        raise OutputError(f"cannot write the samples of step {step}: {cause}", where=str(path),
                          fix=fix if disk_full(exc) else "make the run's samples/ folder writable") from None
    return path


def evaluated_step(run_dir: Path) -> int | None:
    """The step of the run's last evaluation that finished, or None."""
    try:
        return json.loads((run_dir / EVALUATED_FILE).read_text()).get("step")
    except (OSError, ValueError, AttributeError):
        return None


def mark_evaluated(run_dir: Path, step: int) -> None:
    write_atomic_text(run_dir / EVALUATED_FILE, json.dumps({"step": step}) + "\n")


class Evaluator:
    """A run's evaluation: ``eval.num_samples`` samples from the run's path, source and solver, drawn in
    seeded chunks of ``eval.chunk_size`` (split over the DDP ranks) under guidance at
    ``eval.guidance_scale``, saved first, then scored by the metrics and written by the writers.

    Built once by the :class:`~fmkit.engine.trainer.Trainer` and holding no weights: each call is handed
    the field to sample, which :meth:`sampling_model` makes of the trainer's weights.

    Args:
        path, source, solver: how samples are drawn (x0 ~ source, integrated along the path's field).
        dataset: gives the sample templates (sizes, masks, conditions) and the metrics' reference.
        options: the ``eval:`` section.
        metrics, writers: ``{name: metric}`` and ``{name: writer}`` (run on rank 0).
        device, dist: where to sample; the DDP ranks to split the chunks over (None: one process).
        run_dir: where samples, artefacts and the last finished evaluation go (None: nowhere).
        hints: the fixes error messages give.
    """

    def __init__(self, path: StatePath, source: StateSource, solver: Solver, dataset: Dataset,
                 options: EvalOptions, *, metrics: Mapping[str, Metric] | None = None,
                 writers: Mapping[str, Writer] | None = None, device: torch.device | str = "cpu",
                 dist: DistInfo | None = None, run_dir: Path | None = None, hints: FixHints | None = None) -> None:
        self.path, self.source, self.solver, self.dataset, self.options = path, source, solver, dataset, options
        self.metrics, self.writers = dict(metrics or {}), dict(writers or {})
        self.device, self.dist, self.run_dir = torch.device(device), dist, run_dir
        self.hints = hints or FixHints()
        self.null_class = dataset.info.null_class
        if options.guidance_scale is not None and self.null_class is None:
            raise TrainingError("eval.guidance_scale needs a null class for dropped conditions, and the dataset "
                                "declares no number of condition classes (its info.num_cond_classes is None)",
                                where="eval.guidance_scale", fix=f"{NULL_CLASS_FIX}; otherwise drop guidance_scale")
        # before any training: evaluation would otherwise fail at its first sample, hours in
        check_continuous_only(solver, [k for k, f in dataset.info.fields.items() if f.categorical])

    def check_metrics(self) -> None:
        """Each metric's optional ``check(dataset)`` (:mod:`fmkit.engine.callbacks`), before a fit's first step."""
        for metric in self.metrics.values():
            check = getattr(metric, "check", None)
            if callable(check):
                check(self.dataset)

    @property
    def active(self) -> bool:
        """Whether there is anything to evaluate (a metric or a writer)."""
        return bool(self.metrics or self.writers)

    def due(self, step: int) -> bool:
        """Whether ``eval.every`` asks for an evaluation after ``step`` (the last step's comes anyway)."""
        return bool(self.options.every) and step % self.options.every == 0

    def sampling_model(self, model: nn.Module, ema: nn.Module | None = None) -> nn.Module:
        """The field that samples: the EMA weights ``ema`` when given and ``eval.use_ema``, else ``model``;
        under guidance at ``eval.guidance_scale`` (:func:`~fmkit.flow.guidance.with_guidance`)."""
        weights = ema if ema is not None and self.options.use_ema else model
        return with_guidance(weights, self.options.guidance_scale, self.null_class)

    @torch.no_grad()
    def sample(self, model: nn.Module, n: int, solver: Solver | None = None, seed: int = 0,
               distributed: bool = False) -> State:
        """``n`` samples (CPU tensors) of ``model``, the field :meth:`sampling_model` gives; the global RNG
        and the model's mode are restored, so sampling leaves training's random stream as it was.

        Args:
            model: the field to sample, usually :meth:`sampling_model`'s.
            n: number of samples.
            solver: the solver to integrate with; None: the evaluator's (``eval.solver``).
            seed: seed of the samples (the same seed gives the same samples).
            distributed: split the chunks over the DDP ranks (each rank must call); every rank gets all.

        Returns:
            The samples, a State of CPU tensors [n, ...].
        """
        was_training = model.training
        model.eval()
        rng = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return sample_in_chunks(model, self.path, self.source, solver or self.solver, self.dataset, n,
                                    self.options.chunk_size, self.device, seed, dist=self.dist if distributed else None)
        finally:
            torch.set_rng_state(rng)
            model.train(was_training)

    def run(self, model: nn.Module, step: int, log: Callable[[Mapping[str, float]], None],
            media: Callable[[int, str, Sequence[Path]], None] | None = None) -> dict[str, float]:
        """One evaluation of ``model`` (:meth:`sampling_model`'s) at ``step``; every rank calls, rank 0 alone
        scores and writes. Samples are saved first, so that a metric or writer that fails loses nothing;
        every metric and writer runs, their results go to ``log`` as ``eval/<name>`` and the files each writer
        made to ``media(step, writer, paths)``, and the first failure is raised after. Returns the metrics
        (rank 0; ``{}`` elsewhere)."""
        samples = self.sample(model, self.options.num_samples, distributed=True)
        if self.dist is not None and self.dist.rank != 0:
            return {}
        out = self.run_dir / "samples" if self.run_dir is not None else None
        if out is not None:
            resume = self.hints.resume_hint(self.run_dir)
            save_samples(samples, out, step, fix=f"free space on that disk, then {resume} (from its last checkpoint)")
        results, failed = score(self.metrics, samples, self.dataset)
        if out is not None:
            def write(name: str, writer: Writer) -> None:
                paths = writer(samples, out, self.dataset, step)
                if media is not None:
                    media(step, name, list(paths or []))

            failed = each(self.writers, write) or failed
        if results:
            log({f"eval/{k}": v for k, v in results.items()})
        if failed is not None:
            raise failed
        return results

    def unfinished(self, step: int) -> bool:
        """Whether the evaluation of ``step`` is due but never ran to its end (a stop signal ended it): a run
        with a directory and something to evaluate whose last finished evaluation is of another step."""
        return self.run_dir is not None and self.active and evaluated_step(self.run_dir) != step

    def mark_finished(self, step: int) -> None:
        """Record that the evaluation of ``step`` ran to its end (rank 0 of a run with a directory)."""
        if self.run_dir is not None and (self.dist is None or self.dist.rank == 0):
            mark_evaluated(self.run_dir, step)
