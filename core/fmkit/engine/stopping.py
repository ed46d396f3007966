"""Why a fit stops before its last step, and what it says: stop signals (SIGINT, SIGTERM, SIGHUP)
and a loss that became NaN/Inf."""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fmkit.engine.distributed import all_gather_objects, all_reduce_mean
from fmkit.engine.hints import FixHints
from fmkit.errors import TrainingError
from fmkit.flow.state import State, fields

#: the signals a fit handles: SIGHUP is the terminal of an interactive run closing
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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


def finite(loss: Tensor, world_size: int) -> bool:
    """Whether a step's loss is finite; under DDP every rank decides on the mean, so all stop together."""
    if world_size > 1:
        loss = all_reduce_mean(loss.clone(), world_size)
    return math.isfinite(loss.item())


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


def interrupted(signal_name: str, step: int, run_dir: Path | None, hints: FixHints,
                evaluating: bool = False) -> TrainingInterrupted:
    """A fit stopped by ``signal_name`` at ``step``: with its checkpoint saved, or during an evaluation."""
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


def out_of_memory(step: int, micro_batch: int, grad_accum: int, hints: FixHints) -> TrainingError:
    return TrainingError(f"CUDA ran out of memory at step {step} with a micro-batch of {micro_batch}",
                         where="trainer.batch_size / trainer.grad_accum",
                         fix=f"lower the per-step memory: e.g. {hints.set_option('grad_accum', grad_accum * 2)} "
                             "(same effective batch) or a smaller trainer.batch_size")
