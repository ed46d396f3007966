"""The one CFM training engine, for every modality: :class:`Trainer`.

A step is the objective (:class:`~fmkit.flow.objectives.CFMObjective`) and an AdamW update; each job
around it lives in its own module of :mod:`fmkit.engine` (data stream, setup, model call, optim,
snapshot, evaluation, log window, stopping), so the loop below reads in one screen.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fmkit.engine import checkpoint as ckpt
from fmkit.engine import distributed, evaluation, lineage, setup, snapshot, stopping
from fmkit.engine.callbacks import Callback, Metric, Writer
from fmkit.engine.hints import FixHints
from fmkit.engine.logwindow import LogWindow
from fmkit.engine.metrics_log import MetricsLogger, ProgressBar
from fmkit.engine.model_call import TrainingForward
from fmkit.engine.optim import EMA, build_optimizer, set_lr
from fmkit.engine.options import EvalOptions, ObjectiveOptions, TrainerOptions
from fmkit.engine.runlock import RunLock
from fmkit.engine.stream import BatchStream, LoaderPairing
from fmkit.errors import CheckpointError, NonFiniteDataError, OutputError
from fmkit.flow.couplings import Coupling, IndependentCoupling
from fmkit.flow.data import Dataset
from fmkit.flow.paths import AffinePath, CondOTScheduler, ProbPath, StatePath
from fmkit.flow.solvers import FixedStepSolver, Solver, check_continuous_only
from fmkit.flow.sources import GaussianSource, Source, StateSource
from fmkit.flow.state import State


class Trainer:
    """Trains ``model`` on ``dataset`` by conditional flow matching.

    ``path``/``source`` may be per-field objects (used for every field) or composed State* objects.
    ``run_dir`` is where checkpoints, metrics and artefacts go (nothing is written when None).
    ``fingerprint`` (any JSON-able dict; a recipe's: every option of its model, data, path and
    source) is stored in checkpoints, and resuming from one with another fingerprint is refused.
    ``hints``: the fixes its error messages give (:class:`FixHints`; the CLI passes its own).
    ``objective``: the loss to minimise (a recipe's ``objective:`` section; default ``{name: cfm}``).
    """

    def __init__(self, model: nn.Module, dataset: Dataset, *, path: ProbPath | StatePath | None = None,
                 source: Source | StateSource | None = None, coupling: Coupling | None = None,
                 solver: Solver | None = None, options: TrainerOptions | None = None,
                 eval_options: EvalOptions | None = None, metrics: Mapping[str, Metric] | None = None,
                 writers: Mapping[str, Writer] | None = None, callbacks: Sequence[Callback] = (),
                 run_dir: str | Path | None = None, seed: int = 0, fingerprint: Mapping[str, Any] | None = None,
                 hints: FixHints | None = None, objective: ObjectiveOptions | Mapping[str, Any] | None = None):
        self.opts = o = setup.coerce_options(TrainerOptions, options, "options")
        self.eval_opts = setup.coerce_options(EvalOptions, eval_options, "eval_options")
        self.dataset = dataset
        self.path = path if isinstance(path, StatePath) else StatePath(path or AffinePath(CondOTScheduler()))
        self.source = source if isinstance(source, StateSource) else StateSource(source or GaussianSource())
        self.coupling = coupling or IndependentCoupling()
        self.solver = solver or FixedStepSolver("euler", 100)
        # before any training: evaluation would otherwise fail at its first sample, hours in
        check_continuous_only(self.solver, [k for k, f in dataset.info.fields.items() if f.categorical])
        self.metrics, self.writers, self.callbacks = dict(metrics or {}), dict(writers or {}), list(callbacks)
        self.seed, self.fingerprint, self.hints = seed, dict(fingerprint or {}), hints or FixHints()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # under torchrun (WORLD_SIZE > 1) a library script need not set up the process group itself
        in_torchrun = "WORLD_SIZE" in os.environ
        self.dist = distributed.init_from_env(device=o.device) if in_torchrun else distributed.dist_info()
        self.device = setup.training_device(o, self.dist)
        self.is_main = self.dist.rank == 0
        self.step, self.finished = 0, False
        self.lineage: dict[str, Any] | None = None  # trainer.init_from: whose weights this run started from
        self.provenance: dict[str, Any] | None = None  # who made the components (recorded in checkpoints)
        self.signals = stopping.StopSignals()
        self.divergence = stopping.DivergenceWatch(o.divergence)  # a finite loss that blew up
        self._vote: distributed.StopVote | None = None  # made by the first fit: under DDP it builds a process group
        self.stopped_early: str | None = None  # the reason given to request_stop, once it stopped a fit
        self._stop_requested: str | None = None
        self._evaluated_at = -1  # the step of the last evaluate(), so a stop right after one does not repeat it
        self.pending: list[Tensor] = []  # losses of the steps since the last log line (kept in checkpoints)
        self._bad_fields: set[str] = set()  # fields in which a coupling met NaN/Inf (DDP: reported at the NaN check)
        setup.check_options(o, self.eval_opts, dataset.info, self.dist.world_size)
        self.micro_batch = o.batch_size // o.grad_accum
        self.null_cond = dataset.info.num_cond_classes  # index of the null class for CFG
        self.time = functools.partial(setup.time_sampler, o)
        self.objective = setup.build_objective(setup.objective_options(objective), self.path, self.source,
                                               self.coupling, time=self.time, cond_dropout=o.cond_dropout,
                                               null_class=self.null_cond or 0, weights=o.loss_weights)
        setup.check_model_signature(model)
        self.model = model.to(self.device)
        self.channels_last = setup.use_channels_last(self.model, self.device, o.channels_last, self.objective)
        if self.channels_last:  # before the EMA copy and the optimizer state, which keep the same layout
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, o.ema_decay) if o.ema_decay else None
        # the objective's module of the model (MeanFlow: its JVP inside the forward DDP syncs) under DDP/compile
        self.train_model = setup.wrap_for_training(self.model, self.dist, self.device, o.compile, self.objective)
        self._params = list(self.model.parameters())  # for clipping: no module walk per step
        self.optimizer = build_optimizer(self.model, o, self.device)
        # auto: bf16 on CUDA only; an explicit bf16 autocasts on any device (on the CPU: for checks)
        self.autocast = o.precision == "bf16" or (o.precision == "auto" and self.device.type == "cuda")
        # the model as the objective calls it: precision and memory layout stay with the engine
        self.forward = TrainingForward(self.train_model, autocast=self.autocast, channels_last=self.channels_last)
        # CPU-bound couplings pair in the data pipeline, ahead of the step (trainer.pairing)
        self.pair_in_loader = o.pairing == "loader" or (o.pairing == "auto" and self.coupling.host)
        self.stream = self._make_stream()
        self.logger: MetricsLogger | None = None

    # -- data ----------------------------------------------------------------------------------
    def _make_stream(self, epoch: int = 0, index: int = 0) -> BatchStream:
        pairing = LoaderPairing(self.source, self.coupling) if self.pair_in_loader else None
        return BatchStream(self.dataset, self.micro_batch, self.seed, self.dist, self.opts.num_workers,
                           pin_memory=self.device.type == "cuda", epoch=epoch, index=index,
                           accum=self.opts.grad_accum, pairing=pairing)

    def restart_stream(self, epoch: int, index: int) -> None:
        """Continue the data from ``(epoch, index)`` (a resume)."""
        self.stream.close()
        self.stream = self._make_stream(epoch, index)

    def next_batch(self) -> tuple[State | None, State]:
        """The next micro-batch on the device: ``(x0, x1)`` with x0 paired already when the data
        pipeline pairs (``trainer.pairing``), else ``(None, x1)``."""
        return self.stream.next_on(self.device)

    def loss(self, batch: State, x0: State | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The objective's loss of one (micro-)batch already on the device: total and per-field means.
        ``x0`` is the batch's source sample when it was drawn and paired already (see :meth:`next_batch`)."""
        return self.objective(self.forward, batch, x0)

    # -- training ------------------------------------------------------------------------------
    def fit(self, resume: bool | str | Path = False, until: int | None = None) -> Trainer:
        """Train to ``options.steps``; ``resume=True`` continues from the run directory's latest
        checkpoint, a path resumes from that checkpoint. ``until`` stops early at that step (with a
        checkpoint), keeping the schedule of the full run — a later ``fit(resume=True)`` continues.
        The run directory is locked for the fit (:class:`fmkit.engine.runlock.RunLock`): a second trainer of
        the same run is refused, naming the first."""
        if self.run_dir is not None and self.is_main:
            setup.check_writable(self.run_dir)
        lock = RunLock(self.run_dir) if self.run_dir is not None and self.is_main else None
        if lock is not None:
            lock.acquire()
        try:
            return self._fit(resume, until)
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, resume: bool | str | Path, until: int | None) -> Trainer:
        self.stopped_early, self._bad_fields = None, set()
        if resume:
            self.resume(None if resume is True else Path(resume))
        else:
            self._start_fresh()
        if self.step >= self.opts.steps and self._evaluation_pending():  # stopped during its final evaluation
            with self._logging(), self.signals.installed(self._interrupted_evaluation):
                self.evaluate()
            return self
        if self.step >= self.opts.steps:
            raise stopping.already_finished(self.step, self.opts.steps, self.run_dir, self.hints)
        for cb in self.callbacks:
            cb.on_train_start(self)
        # a fit ended by an exception or at the last step ends the DataLoader workers too (the stream restarts
        # them if asked again); one stopped at ``until`` or by request_stop keeps them for the next fit
        ended = True
        try:
            with self._logging(), self.signals.installed(self._interrupted_evaluation):
                self._loop(min(until, self.opts.steps) if until is not None else self.opts.steps)
            ended = self.step >= self.opts.steps
        except torch.cuda.OutOfMemoryError:
            raise stopping.out_of_memory(self.step, self.micro_batch, self.opts.grad_accum, self.hints) from None
        finally:
            if ended:
                self.stream.close()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self

    def _start_fresh(self) -> None:
        """Step 0: refuse a run directory with checkpoints, seed, and take ``trainer.init_from``'s weights."""
        if self.run_dir is not None:
            setup.check_fresh_start(self.run_dir)
        # torch.manual_seed would visit every GPU
        distributed.seed_generators(self.seed + 7919 * self.dist.rank, self.device)
        if self.opts.init_from and self.lineage is None:  # a fresh run only: a resumed one has its own weights
            self.lineage = lineage.start_from(self.opts.init_from, self.opts.init_from_ema, self.model, self.ema,
                                              self.run_dir if self.is_main else None)

    @contextlib.contextmanager
    def _logging(self) -> Iterator[None]:
        """``metrics.csv`` open for the block (rank 0 of a run with a directory), rows past this step dropped."""
        if self.run_dir is not None and self.is_main:
            self.logger = MetricsLogger(self.run_dir, truncate_after=self.step)
        try:
            yield
        finally:
            if self.logger is not None:
                self.logger.close()
                self.logger = None

    def _loop(self, stop: int) -> None:
        o = self.opts
        check_every = 1 if self.device.type == "cpu" else o.log_every  # on a GPU a check syncs the host
        bar = ProgressBar(o.steps, start=self.step, enabled=o.progress and self.is_main)
        window = LogWindow(self.step, self.pending)
        self._vote = vote = self._vote or distributed.StopVote(self.dist.world_size)
        try:
            with bar:
                while self.step < stop:
                    set_lr(self.optimizer, self.step, o)
                    loss, batch = self._gradients(window)
                    if (self.step + 1) % check_every == 0:
                        self._check_loss(loss, batch, check_every)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self._params, o.grad_clip) if o.grad_clip else None
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.ema is not None:
                        self.ema.update()
                    self.step += 1
                    window.losses.append(loss)
                    self._report(window, bar, batch, grad_norm, check_every)
                    for cb in self.callbacks:
                        cb.on_step_end(self, self.step)
                    if self._after_step(stop, window, vote):
                        break
        except stopping.TrainingInterrupted:  # agreed by every rank: no vote is in flight
            raise
        except BaseException:  # maybe on this rank alone: its vote in flight is abandoned with it
            self._vote = None
            raise
        vote.finish()  # the last step's vote, which every rank posted
        if (self.metrics or self.writers) and (self.step == o.steps or self.stopped_early is not None) \
                and self._evaluated_at != self.step:
            self.evaluate()

    def _gradients(self, window: LogWindow) -> tuple[Tensor, State]:
        """Forward and backward over this step's ``grad_accum`` micro-batches: their mean loss (on the
        device, not synced) and the last micro-batch; the time waiting for data goes to ``window``."""
        o = self.opts
        loss_sum: Tensor | None = None
        batch: State = {}
        for micro in range(o.grad_accum):
            with window.waiting():
                x0, batch = self.next_batch()
            # shard m * world + rank draws from its own (seed, step, shard) stream: see distributed.py
            distributed.seed_shard(self.seed, self.step, micro * self.dist.world_size + self.dist.rank, self.device)
            sync = micro == o.grad_accum - 1 or self.dist.world_size == 1
            with contextlib.nullcontext() if sync or not hasattr(self.train_model, "no_sync") \
                    else self.train_model.no_sync():
                try:
                    loss, _ = self.loss(batch, x0)
                except NonFiniteDataError as exc:  # the coupling met NaN/Inf: before any update
                    if self.dist.world_size == 1:
                        self._non_finite(batch, check_every=1)
                    # the other ranks are in this step's collectives already: go on unpaired, so the NaN
                    # reaches the loss, whose check stops every rank at the same step
                    self._bad_fields.update(f.removeprefix("x1.") for f in exc.fields)
                    loss, _ = self.loss(batch, self.source.sample(batch))
                (loss / o.grad_accum if o.grad_accum > 1 else loss).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        return (loss_sum / o.grad_accum if o.grad_accum > 1 else loss_sum), batch  # type: ignore[return-value]

    def _report(self, window: LogWindow, bar: ProgressBar, batch: State, grad_norm: Tensor | None,
                check_every: int) -> None:
        """The progress bar after each step; a ``metrics.csv`` line (means over ranks) every ``log_every``."""
        o = self.opts
        if self.step % o.log_every == 0 or self.step == o.steps:
            losses = distributed.all_reduce_mean(torch.stack(window.losses).float(), self.dist.world_size)
            if not torch.isfinite(losses).all().item():
                self._non_finite(batch, check_every)
            scalars = window.close(self.step, float(losses.mean()), self.optimizer.param_groups[0]["lr"], o.batch_size,
                                   grad_norm, self.device)
            bar.update(self.step, scalars["loss"], scalars["steps_per_s"])
            if self.logger:
                try:
                    self.logger.log(self.step, scalars)
                except OutputError as exc:  # metrics.csv made unwritable under a running training
                    saved = ""
                    if self.dist.world_size == 1:  # (under DDP the other ranks are not here to save with it)
                        self.save_checkpoint()
                        saved = f"; a checkpoint of step {self.step} was saved"
                    raise OutputError(exc.what + saved, where=exc.where,
                                      fix=f"{exc.fix}, then {self.hints.resume_hint(self.run_dir)}") from None
        elif bar.enabled and check_every == 1:  # on a CPU the losses are on the host: the window's mean so far
            bar.update(self.step, float(torch.stack(window.losses).mean()))
        else:
            bar.update(self.step)

    def _after_step(self, stop: int, window: LogWindow, vote: distributed.StopVote) -> bool:
        """Checkpoint and evaluate when due; True when a callback asked to stop; raises on a stop signal."""
        o = self.opts
        done = self.step == o.steps
        with window.aside():
            saved = self.step % o.checkpoint_every == 0 or self.step == stop  # a stop below needs no other
            if saved:
                self.finished = done
                self.save_checkpoint()
            if self.eval_opts.every and self.step % self.eval_opts.every == 0 and not done:
                self.evaluate()
        if self._stop_requested is not None and not done:
            if not saved:
                self.save_checkpoint()
            self.stopped_early, self._stop_requested = self._stop_requested, None
            return True
        stop_signal = vote(self.signals.received or 0)  # under DDP: the same step on every rank
        if stop_signal:
            if not saved:
                self.save_checkpoint()
            raise stopping.interrupted(signal.Signals(stop_signal).name, self.step, self.run_dir, self.hints)
        return False

    def request_stop(self, reason: str = "requested") -> None:
        """End training after the current step, as if it were the last (checkpoint, final evaluation);
        for callbacks (early stopping). Under DDP every rank must request it at the same step."""
        self._stop_requested = reason

    def log(self, scalars: Mapping[str, float]) -> None:
        """Add ``scalars`` to metrics.csv (and TensorBoard) at the current step; a no-op outside
        ``fit``, without a run directory, or on ranks other than 0."""
        if self.logger is not None:
            self.logger.log(self.step, {k: float(v) for k, v in scalars.items()})

    def _interrupted_evaluation(self, signal_name: str) -> stopping.TrainingInterrupted:
        return stopping.interrupted(signal_name, self.step, self.run_dir, self.hints, evaluating=True)

    def _check_loss(self, loss: Tensor, batch: State, check_every: int) -> None:
        """Stop on a NaN/Inf loss, or on a finite one far above its running level (it diverged); under DDP
        all ranks decide on the mean, so they stop together."""
        value = stopping.loss_value(loss, self.dist.world_size)
        if not math.isfinite(value):
            self._non_finite(batch, check_every)
        level = self.divergence(value)
        if level is not None:
            done = ckpt.complete_checkpoints(self.run_dir / "checkpoints") if self.run_dir is not None else []
            kept = done[-1].name if done else None
            raise stopping.diverged_error(self.step + 1, value, level, self.opts.divergence or 0.0, kept,
                                          self.run_dir, self.hints, self.opts.lr)

    def _non_finite(self, batch: State, check_every: int) -> None:
        """Stop on NaN/Inf: name the batch's bad fields (or blame divergence) and keep the last good state."""
        bad = stopping.bad_fields(batch, self._bad_fields, self.dist.world_size)
        if self.run_dir is None:
            saved = "nothing was saved (the trainer has no run_dir)"
        elif check_every == 1:
            saved = f"the last good state (before step {self.step + 1}) was saved as a checkpoint"
            self.save_checkpoint()
        else:
            saved = "the last good checkpoint on disk is kept (the weights in memory may be corrupt)"
        raise stopping.non_finite_error(self.step + 1, bad, saved, str(self.run_dir) if self.run_dir else None)

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_data(self, pending: list[float] | None = None) -> ckpt.CheckpointData:
        """What a checkpoint holds; ``pending``: the current log window's losses (default this rank's)."""
        return snapshot.capture(self, pending)

    def save_checkpoint(self) -> Path | None:
        """A checkpoint of this step (rank 0 writes; a collective: every rank saves at the same steps)."""
        # the log window's losses so far, averaged over ranks as the log line will be; each rank's RNG
        # differs, and only rank 0's is stored: the others re-derive theirs on resume
        pending = None
        if self.dist.world_size > 1 and self.pending:
            pending = distributed.all_reduce_mean(torch.stack(self.pending).float(), self.dist.world_size).tolist()
        path = None
        if self.run_dir is not None and self.is_main:
            try:
                path = ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, snapshot.capture(self, pending),
                                            keep=self.opts.keep_checkpoints)
            except OutputError as exc:  # a full disk: say how to go on once there is room
                raise OutputError(exc.what, where=exc.where,
                                  fix=f"{exc.fix}, then {self.hints.resume_hint(self.run_dir)}") from None
            for cb in self.callbacks:
                cb.on_checkpoint(self, self.step, path)
        self.barrier()
        return path

    def barrier(self) -> None:
        """Wait for every DDP rank (a no-op on one process)."""
        if self.dist.world_size > 1:
            torch.distributed.barrier()

    def resume(self, path: Path | None = None) -> None:
        """Restore model, EMA, optimizer, RNG and data position from a checkpoint (default: the run's latest)."""
        if path is None and self.run_dir is None:
            raise CheckpointError("resume needs a run directory or a checkpoint path")
        path = path if path is not None else self.run_dir
        _, data = ckpt.load_resolved(path)
        self.load_state(data, where=str(path))

    def load_state(self, data: ckpt.CheckpointData, where: str = "checkpoint") -> None:
        """Restore from checkpoint ``data`` (read from ``where``)."""
        snapshot.restore(self, data, where)

    # -- sampling and evaluation ---------------------------------------------------------------
    def sampling_model(self) -> nn.Module:
        """The model that samples: the EMA's when ``eval.use_ema``, under guidance when ``eval.guidance_scale``."""
        return evaluation.sampling_model(self)

    def sample(self, n: int, solver: Solver | None = None, seed: int = 0, distributed: bool = False) -> State:
        """``n`` samples with the EMA model (if any), sizes/conditions drawn from the data.

        ``distributed=True`` (every rank must call it then) splits the chunks over the DDP ranks and
        gathers them: every rank gets the same ``n`` samples a single process would draw."""
        return evaluation.sample(self, n, solver, seed, distributed)

    def _evaluation_pending(self) -> bool:
        """Whether this finished run's final evaluation never completed (a stop signal ended it)."""
        if self.run_dir is None or not (self.metrics or self.writers):
            return False
        return evaluation.evaluated_step(self.run_dir) != self.step

    def evaluate(self) -> dict[str, float]:
        """Sample (split over the DDP ranks), compute metrics, write artefacts; returns the metrics (rank 0).
        On one process a stop signal ends it at once (:class:`stopping.TrainingInterrupted`)."""
        self.signals.evaluating = self.dist.world_size == 1  # under DDP the other ranks are in its collectives
        try:
            self._evaluated_at = self.step
            results = evaluation.run(self)
        finally:
            self.signals.evaluating = False
        if self.run_dir is not None and self.is_main:
            evaluation.mark_evaluated(self.run_dir, self.step)
        return results
