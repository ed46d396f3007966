"""Why a fit stops before its last step, and what it says: stop signals (SIGINT, SIGTERM, SIGHUP),
a loss that became NaN/Inf or diverged (:class:`LossGuard`), and a callback's ``request_stop`` (a
wall-clock guard), which the run records (:func:`record_stop`)."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
from torch import Tensor

from fmkit.engine.checkpoint import complete_checkpoints
from fmkit.engine.distributed import all_gather_objects, all_reduce_mean
from fmkit.engine.files import write_atomic_text
from fmkit.engine.hints import FixHints
from fmkit.engine.options import BatchSizes
from fmkit.errors import TrainingError
from fmkit.flow.state import State, fields

#: the signals a fit handles: SIGHUP is the terminal of an interactive run closing
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: the record of a fit that a callback stopped before trainer.steps (absent when the last fit ran to its end)
STOPPED_FILE = "stopped.json"


def stop_record(step: int, steps: int, by: str | None) -> dict[str, Any] | None:
    """``{step, steps, by, message}`` of a fit stopped at ``step`` of ``steps`` by ``by`` (the reason given to
    ``request_stop``, e.g. ``the wall-clock guard (58 minutes)``), kept in the checkpoint and the run
    directory; None when nothing stopped it (``by`` None)."""
    if by is None:
        return None
    return {"step": step, "steps": steps, "by": by, "message": f"stopped at step {step} of {steps} by {by}"}


def record_stop(run_dir: Path, step: int, steps: int, by: str | None) -> None:
    """``run_dir/stopped.json`` holding the :func:`stop_record`, or none when nothing stopped the fit (``by`` None)."""
    path = Path(run_dir) / STOPPED_FILE
    record = stop_record(step, steps, by)
    if record is None:
        path.unlink(missing_ok=True)
    else:
        write_atomic_text(path, json.dumps(record, indent=1) + "\n")


def read_stop(run_dir: Path) -> dict[str, Any] | None:
    """The run's :func:`record_stop` record (None when its last fit ran to its end, or it is unreadable)."""
    try:
        record = json.loads((Path(run_dir) / STOPPED_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "step" in record else None


class TrainingInterrupted(TrainingError):
    """Training stopped by a signal after saving a checkpoint."""

    exit_code = 130


class StopSignals:
    """Turns stop signals into a request the loop acts on at the end of its step (:attr:`received`),
    with a checkpoint. A second Ctrl-C stops at once; a signal during an evaluation (minutes of
    sampling, and a scheduler's SIGTERM is followed by SIGKILL) ends it at once with
    ``during_evaluation(signal_name)``, while :attr:`evaluating` is set."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.evaluating = False
        # held only while installed: a trainer -> signals -> trainer cycle would outlive the trainer's last
        # reference, and with it the DataLoader workers, which multiprocessing then waits for at exit
        self._during_evaluation: Callable[[str], BaseException] | None = None

    def handler(self, signum: int, frame: Any) -> None:
        if self.evaluating and self._during_evaluation is not None:
            self.evaluating = False
            raise self._during_evaluation(signal.Signals(signum).name)
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the step to end
        self.received = signum

    @contextlib.contextmanager
    def installed(self, during_evaluation: Callable[[str], BaseException]) -> Iterator[None]:
        """The handler in place for the block (main thread only: signals reach no other)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.received = None  # a signal that stopped an earlier fit is spent
        self._during_evaluation = during_evaluation
        old = {s: signal.signal(s, self.handler) for s in STOP_SIGNALS}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self._during_evaluation = None


def non_finite_fields(batch: State) -> set[str]:
    """The floating-point fields of ``batch`` holding NaN or Inf."""
    return {k for k, v in fields(batch).items() if v.is_floating_point() and not torch.isfinite(v).all()}


def loss_value(loss: Tensor, world_size: int) -> float:
    """A step's loss on the host; under DDP the mean over ranks, so every rank decides alike on it."""
    if world_size > 1:
        loss = all_reduce_mean(loss.clone(), world_size)
    return loss.item()


class DivergenceWatch:
    """Finds a loss that diverges without becoming NaN/Inf (``trainer.lr=1e4`` without clipping drives
    the toy loss to 1e27 and it stays finite): the loss of a checked step is compared with its running
    level, an exponential moving average of the checked losses (decay 0.9), whose lowest value so far
    is the reference. A loss above ``factor`` times that reference, and above the first loss seen (an
    untrained model's), has diverged. ``factor`` None: never."""

    DECAY = 0.9

    def __init__(self, factor: float | None) -> None:
        self.factor = factor
        self.first: float | None = None
        self.level: float | None = None
        self.best: float | None = None

    def __call__(self, loss: float) -> float | None:
        """Take a finite loss; return the reference level it exceeded (it diverged), else None."""
        if self.factor is None:
            return None
        if self.first is None:
            self.first = self.level = self.best = loss
            return None
        if self.best is not None and loss > self.factor * max(self.best, 0.0) and loss > self.first:
            return self.best
        self.level = self.DECAY * self.level + (1 - self.DECAY) * loss  # type: ignore[operator]
        self.best = min(self.best, self.level)  # type: ignore[type-var]
        return None


class LossGuard:
    """Stops a fit whose loss went bad: NaN/Inf (naming the batch's broken fields, else blaming divergence)
    or finite far above its running level (:class:`DivergenceWatch`, ``trainer.divergence``); the error
    says what was kept. Under DDP every rank decides on the same numbers (the checks are collective), so
    all stop at the same step. ``met``: fields in which a coupling met NaN/Inf during the fit.

    Args:
        factor: ``trainer.divergence``: stop when a finite loss passes this times its level (None: off).
        lr: the learning rate, for the fix the divergence error suggests (a tenth of it).
        world_size: number of DDP processes (the checks gather over them).
        run_dir: the run directory, to name the kept checkpoint; None without one.
        hints: how the errors' fixes are phrased (library call or CLI).
    """

    def __init__(self, factor: float | None, lr: float, world_size: int, run_dir: Path | None,
                 hints: FixHints) -> None:
        self.divergence = DivergenceWatch(factor)
        self.lr, self.world_size, self.run_dir, self.hints = lr, world_size, run_dir, hints
        self.met: set[str] = set()

    def check(self, loss: Tensor, batch: State, step: int, save: Callable[[], Any] | None) -> None:
        """Raise if the loss of step ``step + 1`` (``batch`` its last micro-batch) is bad; ``save`` keeps the
        last good state (the weights before this step's update), None when they are not known to be good."""
        value = loss_value(loss, self.world_size)
        if not math.isfinite(value):
            self.non_finite(batch, step, save)
        level = self.divergence(value)
        if level is not None:
            done = complete_checkpoints(self.run_dir / "checkpoints") if self.run_dir is not None else []
            raise diverged_error(step + 1, value, level, self.divergence.factor or 0.0, done[-1].name if done else None,
                                 self.run_dir, self.hints, self.lr)

    def non_finite(self, batch: State, step: int, save: Callable[[], Any] | None) -> NoReturn:
        """Raise for NaN/Inf met at step ``step + 1``, after ``save`` (if any) kept the last good state."""
        bad = bad_fields(batch, self.met, self.world_size)
        if self.run_dir is None:
            saved = "nothing was saved (the trainer has no run_dir)"
        elif save is not None:
            saved = f"the last good state (before step {step + 1}) was saved as a checkpoint"
            save()
        else:
            saved = "the last good checkpoint on disk is kept (the weights in memory may be corrupt)"
        raise non_finite_error(step + 1, bad, saved, str(self.run_dir) if self.run_dir else None)


def bad_fields(batch: State, met: set[str], world_size: int) -> list[str]:
    """The fields that broke a step: NaN/Inf in ``batch`` or ``met`` by the coupling, gathered over the
    DDP ranks (every rank is here at the same step: the checks are collective), so all give one diagnosis."""
    bad = non_finite_fields(batch) | met
    if world_size > 1:
        bad = set().union(*all_gather_objects(sorted(bad), world_size))
    return sorted(bad)


def non_finite_error(step: int, bad_fields: list[str], saved: str, where: str | None) -> TrainingError:
    """The error for a loss that became NaN/Inf at ``step``: broken data when ``bad_fields``, else divergence;
    ``saved`` says what was kept."""
    cause = (f"the batch holds NaN/Inf in field(s) {bad_fields}: the data is broken" if bad_fields
             else "the model or optimizer diverged")
    return TrainingError(f"the loss became NaN/Inf at step {step}; {cause}; {saved}", where=where,
                         fix="clean the data" if bad_fields else
                         "lower trainer.lr, keep trainer.grad_clip set, or add warmup")


def diverged_error(step: int, loss: float, level: float, factor: float, kept: str | None, run_dir: Path | None,
                   hints: FixHints, lr: float) -> TrainingError:
    """The error for a finite loss that grew past ``factor`` times its running ``level`` at ``step``.

    Args:
        step: the step whose loss diverged.
        loss: that loss.
        level: the running level it exceeded.
        factor: ``trainer.divergence``.
        kept: the name of the last checkpoint on disk, which is left to go on from; None: there is none.
        run_dir: the run directory, for ``where`` and the resume hint; None without one.
        hints: how the fix is phrased (library call or CLI).
        lr: the learning rate (the fix suggests a tenth of it).

    Returns:
        The TrainingError to raise, with what was kept and how to go on.
    """
    again = f"; then {hints.resume_hint(run_dir)} goes on from {kept}" if run_dir is not None and kept else ""
    kept = f"the last checkpoint, {kept}, is kept" if kept else "no checkpoint was written yet"
    return TrainingError(f"the loss diverged at step {step}: {loss:.3g} is more than {factor:g} times its running "
                         f"level {level:.3g} (finite, but training does not recover from this); the weights of this "
                         f"step were not saved; {kept}", where=str(run_dir) if run_dir is not None else None,
                         fix=f"lower trainer.lr (e.g. {hints.set_option('lr', f'{lr / 10:g}')}), keep "
                             f"trainer.grad_clip set, or add warmup{again}; {hints.set_option('divergence', 'null')} "
                             "turns this check off")


def interrupted(signal_name: str, step: int, run_dir: Path | None, hints: FixHints,
                evaluating: bool = False) -> TrainingInterrupted:
    """A fit stopped by ``signal_name`` at ``step``: with its checkpoint saved, or during an evaluation.

    Args:
        signal_name: the signal that stopped it (``SIGINT``, ``SIGTERM``).
        step: the step it stopped at.
        run_dir: the run directory, for ``where`` and the resume hint; None without one.
        hints: how the fix is phrased (library call or CLI).
        evaluating: it stopped during the evaluation of ``step`` (which the resume finishes).

    Returns:
        The TrainingInterrupted to raise.
    """
    where = str(run_dir) if run_dir else None
    if evaluating:
        return TrainingInterrupted(
            f"training stopped by {signal_name} during the evaluation at step {step}; the checkpoint of this step "
            "is kept and the evaluation was not finished", where=where,
            fix=(hints.resume_hint(run_dir) + " runs the evaluation") if run_dir else None)
    return TrainingInterrupted(f"training stopped by {signal_name} at step {step}; a checkpoint of this step was "
                               "saved", where=where, fix=hints.resume_hint(run_dir) if run_dir else None)


def already_finished(step: int, steps: int, run_dir: Path | None, hints: FixHints) -> TrainingError:
    return TrainingError(f"this run already finished: it is at step {step} of trainer.steps={steps}",
                         where=str(run_dir) if run_dir else None,
                         fix="to train longer, resume with a larger budget, e.g. "
                             f"{hints.set_option('steps', steps * 2)}")


def out_of_memory(step: int, batches: BatchSizes, hints: FixHints) -> TrainingError:
    """CUDA out of memory in the step: fewer examples per forward/backward (``batches.micro_batch``) would fit."""
    return TrainingError(f"CUDA ran out of memory at step {step} with a micro-batch of {batches.micro_batch} "
                         "per process", where="trainer.batch_size / trainer.grad_accum",
                         fix=f"lower the per-step memory: e.g. {hints.set_option('grad_accum', 2 * batches.grad_accum)}"
                             " (same effective batch) or a smaller trainer.batch_size")
