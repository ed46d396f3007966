"""The one CFM training engine, for every modality: :class:`Trainer`.

A step (:meth:`Trainer._loop`, :meth:`Trainer._gradients`) is the objective built once
(:class:`~fmkit.flow.objectives.CFMObjective`) over ``grad_accum`` micro-batches and an AdamW update. The
Trainer owns the objects around it, each from a module of its own: the batch sizes (options.py), the data
stream (stream.py), the model call (model_call.py), its evaluation (:class:`~fmkit.engine.evaluation.Evaluator`),
its resumable state (:class:`~fmkit.engine.train_state.TrainState`), the log window and the stop checks.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fmkit.engine import checkpoint as ckpt
from fmkit.engine import distributed, lineage, setup, stopping
from fmkit.engine.callbacks import Callback, Metric, Writer
from fmkit.engine.evaluation import Evaluator
from fmkit.engine.hints import FixHints
from fmkit.engine.loggers import Logger, Loggers
from fmkit.engine.logwindow import LogWindow
from fmkit.engine.model_call import TrainingForward
from fmkit.engine.optim import EMA, build_optimizer, set_lr
from fmkit.engine.options import BatchSizes, EvalOptions, ObjectiveOptions, TrainerOptions
from fmkit.engine.progress import ProgressBar
from fmkit.engine.runlock import RunLock
from fmkit.engine.stream import BatchStream, LoaderPairing, resume_index
from fmkit.engine.train_state import TrainState, load_model_state, rng_state
from fmkit.errors import CheckpointError, NonFiniteDataError, OutputError
from fmkit.flow.couplings import Coupling, IndependentCoupling
from fmkit.flow.data import Dataset
from fmkit.flow.paths import AffinePath, CondOTScheduler, ProbPath, StatePath
from fmkit.flow.solvers import FixedStepSolver, Solver
from fmkit.flow.sources import GaussianSource, Source, StateSource
from fmkit.flow.state import State


class Trainer:
    """Trains ``model`` on ``dataset`` by conditional flow matching; configured by this constructor alone.

    Args:
        model, dataset: ``forward(x_t, t, cond) -> velocity`` per field (logits for categorical fields); the data.
        path, source, coupling: the probability path, p_0 and the pairing of x0 with x1 (``path``/``source``:
            per-field objects, used for every field, or composed State* objects); solver: what evaluation uses.
        options, eval_options: :class:`TrainerOptions`, :class:`EvalOptions` (or dicts of their fields).
        metrics, writers, callbacks: what evaluation computes and writes; :class:`Callback` hooks into the loop.
        run_dir: where checkpoints, metrics and artefacts go (nothing is written when None).
        seed: of the data order and every random stream of the fit.
        fingerprint: any JSON-able dict (a recipe's: every option of its model, data, path and source),
            stored in checkpoints; resuming from one with another fingerprint is refused.
        hints, provenance: the fixes its errors give (:class:`FixHints`); who made the components (JSON-able,
            recorded in checkpoints).
        objective: the loss to minimise (a recipe's ``objective:`` section, or a dict of it; default ``{name: cfm}``).
        loggers: trackers besides metrics.csv, always written (a :class:`~fmkit.engine.loggers.Loggers` or Logger list).
    """

    def __init__(self, model: nn.Module, dataset: Dataset, *, path: ProbPath | StatePath | None = None,
                 source: Source | StateSource | None = None, coupling: Coupling | None = None,
                 solver: Solver | None = None, options: TrainerOptions | None = None,
                 eval_options: EvalOptions | None = None, metrics: Mapping[str, Metric] | None = None,
                 writers: Mapping[str, Writer] | None = None, callbacks: Sequence[Callback] = (),
                 run_dir: str | Path | None = None, seed: int = 0, fingerprint: Mapping[str, Any] | None = None,
                 hints: FixHints | None = None, provenance: Mapping[str, Any] | None = None,
                 objective: ObjectiveOptions | Mapping[str, Any] | None = None,
                 loggers: Loggers | Sequence[Logger] | None = None):
        self.opts = o = setup.coerce_options(TrainerOptions, options, "options")
        self.dataset = dataset
        self.path = path if isinstance(path, StatePath) else StatePath(path or AffinePath(CondOTScheduler()))
        self.source = source if isinstance(source, StateSource) else StateSource(source or GaussianSource())
        self.coupling = coupling or IndependentCoupling()
        self.solver = solver or FixedStepSolver("euler", 100)
        self.callbacks = list(callbacks)
        self.seed, self.fingerprint, self.hints = seed, dict(fingerprint or {}), hints or FixHints()
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.provenance = dict(provenance) if provenance is not None else None
        # under torchrun (WORLD_SIZE > 1) a library script need not set up the process group itself
        in_torchrun = "WORLD_SIZE" in os.environ
        self.dist = distributed.init_from_env(device=o.device) if in_torchrun else distributed.dist_info()
        self.device = setup.training_device(o, self.dist)
        self.is_main = self.dist.rank == 0
        self.batches = BatchSizes.of(o, self.dist.world_size)
        setup.check_options(o, dataset.info)
        eval_opts = setup.coerce_options(EvalOptions, eval_options, "eval_options")
        self.evaluator = Evaluator(self.path, self.source, self.solver, dataset, eval_opts, metrics=metrics,
                                   writers=writers, device=self.device, dist=self.dist, run_dir=self.run_dir,
                                   hints=self.hints)
        self.step, self.finished = 0, False
        self.lineage: dict[str, Any] | None = None  # trainer.init_from: whose weights this run started from
        self.signals = stopping.StopSignals()
        self.guard = stopping.LossGuard(o.divergence, o.lr, self.dist.world_size, self.run_dir, self.hints)
        self._vote: distributed.StopVote | None = None  # made by the first fit: under DDP it builds a process group
        self.stopped_early: str | None = None  # the reason given to request_stop, once it stopped a fit
        self._stop_requested: str | None = None
        self._evaluated_at = -1  # the step of the last evaluate(): a stop right after one does not repeat it
        self.window = LogWindow()  # the steps since the last log line (their losses are kept in checkpoints)
        # the loss, built once, before the model's wrapping (MeanFlow's: its JVP inside the forward)
        self.objective = setup.build_objective(objective, o, self.path, self.source, self.coupling,
                                               dataset.info.null_class)
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
        self.forward = TrainingForward(self.train_model, autocast=self.autocast, channels_last=self.channels_last)
        # CPU-bound couplings pair in the data pipeline, ahead of the step (trainer.pairing)
        self.pair_in_loader = o.pairing == "loader" or (o.pairing == "auto" and self.coupling.host)
        self.stream = self._make_stream()
        self.loggers = Loggers.of(loggers)  # metrics.csv and the trackers, open during a fit (rank 0)

    # -- data ----------------------------------------------------------------------------------
    def _make_stream(self, epoch: int = 0, index: int = 0) -> BatchStream:
        pairing = LoaderPairing(self.source, self.coupling) if self.pair_in_loader else None
        return BatchStream(self.dataset, self.batches.global_batch, self.seed, self.dist, self.opts.num_workers,
                           pin_memory=self.device.type == "cuda", epoch=epoch, index=index,
                           accum=self.batches.grad_accum, pairing=pairing)

    def next_batch(self) -> tuple[State | None, State]:
        """The next micro-batch on the device: ``(x0, x1)`` with x0 paired already when the data
        pipeline pairs (``trainer.pairing``), else ``(None, x1)``."""
        return self.stream.next_on(self.device)

    def loss(self, batch: State, x0: State | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The objective's loss of one (micro-)batch already on the device: total and per-field means. ``x0`` is
        the batch's source sample when it was drawn and paired already (see :meth:`next_batch`)."""
        return self.objective(self.forward, batch, x0)

    # -- training ------------------------------------------------------------------------------
    def fit(self, resume: bool | str | Path = False, until: int | None = None) -> Trainer:
        """Train to ``options.steps``; ``resume=True`` continues from the run directory's latest checkpoint,
        a path resumes from that checkpoint. ``until`` stops early at that step (with a checkpoint), keeping
        the schedule of the full run: a later ``fit(resume=True)`` continues. The run directory is locked for
        the fit (:class:`~fmkit.engine.runlock.RunLock`): a second trainer of the run is refused, naming the first."""
        if self.run_dir is not None and self.is_main:
            setup.check_writable(self.run_dir)
        with RunLock(self.run_dir) if self.run_dir is not None and self.is_main else contextlib.nullcontext():
            return self._fit(resume, until)

    def _fit(self, resume: bool | str | Path, until: int | None) -> Trainer:
        self.stopped_early = None
        self.guard.met.clear()
        if resume:
            self.resume(None if resume is True else Path(resume))
        else:
            self._start_fresh()
        if self.step >= self.opts.steps and self.evaluator.unfinished(self.step):  # a signal ended the last one
            with self._session():
                self.evaluate()
            return self
        if self.step >= self.opts.steps:
            raise stopping.already_finished(self.step, self.opts.steps, self.run_dir, self.hints)
        self.evaluator.check_metrics()  # a metric that cannot score (no judge's weights) says so before training
        for cb in self.callbacks:
            cb.on_train_start(self)
        # a fit ended by an exception or at the last step ends the DataLoader workers too (the stream restarts
        # them if asked again); one stopped at ``until`` or by request_stop keeps them for the next fit
        ended = True
        try:
            with self._session():
                self._loop(min(until, self.opts.steps) if until is not None else self.opts.steps)
            ended = self.step >= self.opts.steps
            if self.run_dir is not None and self.is_main:  # a run a callback stopped says so (stopped.json)
                stopping.record_stop(self.run_dir, self.step, self.opts.steps, self.stopped_early)
        except torch.cuda.OutOfMemoryError:
            raise stopping.out_of_memory(self.step, self.batches, self.hints) from None
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
        distributed.seed_generators(self.seed + 7919 * self.dist.rank, self.device)  # manual_seed visits every GPU
        if self.opts.init_from and self.lineage is None:  # a fresh run only: a resumed one has its own weights
            self.lineage = lineage.start_from(self.opts.init_from, self.opts.init_from_ema, self.model, self.ema,
                                              self.run_dir if self.is_main else None)

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        """For the block: stop signals handled, ``metrics.csv`` and the trackers open (rank 0 of a run with a
        directory; rows past this step dropped; a tracker that cannot start raises here, before any step)."""
        if self.run_dir and self.is_main:
            self.loggers.start(self.run_dir, self.step, self.provenance, self.fingerprint)
        try:
            with self.signals.installed(lambda name: stopping.interrupted(name, self.step, self.run_dir, self.hints,
                                                                          evaluating=True)):
                yield
        finally:
            self.loggers.finish()

    def _loop(self, stop: int) -> None:
        o = self.opts
        check_every = 1 if self.device.type == "cpu" else o.log_every  # on a GPU a check syncs the host
        keep_good = self.save_checkpoint if check_every == 1 else None  # a bad loss: the weights before it are good
        bar = ProgressBar(o.steps, start=self.step, enabled=o.progress and self.is_main,
                          heartbeat_s=o.heartbeat_s if self.is_main else 0.0)
        window = self.window
        window.start(self.step)
        self._vote = vote = self._vote or distributed.StopVote(self.dist.world_size)
        try:
            with bar:
                while self.step < stop:
                    set_lr(self.optimizer, self.step, o)
                    loss, batch = self._gradients(window)
                    if (self.step + 1) % check_every == 0:
                        self.guard.check(loss, batch, self.step, keep_good)
                    grad_norm = torch.nn.utils.clip_grad_norm_(self._params, o.grad_clip) if o.grad_clip else None
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.ema is not None:
                        self.ema.update()
                    self.step += 1
                    window.losses.append(loss)
                    self._report(window, bar, batch, grad_norm, keep_good)
                    for cb in self.callbacks:
                        cb.on_step_end(self, self.step)
                    if self._after_step(stop, window, vote):
                        break
        except BaseException as exc:  # on this rank alone, maybe: its vote in flight is abandoned with it
            if not isinstance(exc, stopping.TrainingInterrupted):  # (a stop signal: agreed by every rank)
                self._vote = None
            raise
        vote.finish()  # the last step's vote, which every rank posted
        if self.evaluator.active and (self.step == o.steps or self.stopped_early is not None) \
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
                        self.guard.non_finite(batch, self.step, self.save_checkpoint)
                    # the other ranks are in this step's collectives already: go on unpaired, so the NaN
                    # reaches the loss, whose check stops every rank at the same step
                    self.guard.met.update(f.removeprefix("x1.") for f in exc.fields)
                    loss, _ = self.loss(batch, self.source.sample(batch))
                (loss / o.grad_accum if o.grad_accum > 1 else loss).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        return (loss_sum / o.grad_accum if o.grad_accum > 1 else loss_sum), batch  # type: ignore[return-value]

    def _report(self, window: LogWindow, bar: ProgressBar, batch: State, grad_norm: Tensor | None,
                keep_good: Callable[[], Any] | None) -> None:
        """The progress bar after each step; a ``metrics.csv`` line (means over ranks) every ``log_every``."""
        o = self.opts
        if self.step % o.log_every == 0 or self.step == o.steps:
            losses = distributed.all_reduce_mean(torch.stack(window.losses).float(), self.dist.world_size)
            if not torch.isfinite(losses).all().item():
                self.guard.non_finite(batch, self.step, keep_good)
            scalars = window.close(self.step, float(losses.mean()), self.optimizer.param_groups[0]["lr"],
                                   self.batches.global_batch, grad_norm, self.device)
            bar.update(self.step, scalars["loss"], scalars["steps_per_s"])
            try:
                self.loggers.log_scalars(self.step, scalars)
            except OutputError as exc:  # metrics.csv made unwritable under a running training
                saved = ""
                if self.dist.world_size == 1:  # (under DDP the other ranks are not here to save with it)
                    self.save_checkpoint()
                    saved = f"; a checkpoint of step {self.step} was saved"
                raise self.hints.then_resume(exc, self.run_dir, saved) from None
        elif (bar.enabled or bar.beating) and self.device.type == "cpu":  # losses on the host: the window's mean
            bar.update(self.step, float(torch.stack(window.losses).mean()))
        else:
            bar.update(self.step)

    def _after_step(self, stop: int, window: LogWindow, vote: distributed.StopVote) -> bool:
        """Checkpoint and evaluate when due; True when a callback asked to stop; raises on a stop signal."""
        o = self.opts
        done = self.step == o.steps
        # a callback's request_stop, before the checkpoint that records it (a request at the last step is no stop)
        self.stopped_early, self._stop_requested = (None if done else self._stop_requested), None
        with window.aside():
            saved = self.step % o.checkpoint_every == 0 or self.step == stop or self.stopped_early is not None
            if saved:
                self.finished = done
                self.save_checkpoint()
            if self.evaluator.due(self.step) and not done:
                self.evaluate()
        if self.stopped_early is not None:
            return True
        stop_signal = vote(self.signals.received or 0)  # under DDP: the same step on every rank
        if stop_signal:
            if not saved:
                self.save_checkpoint()
            raise stopping.interrupted(signal.Signals(stop_signal).name, self.step, self.run_dir, self.hints)
        return False

    def request_stop(self, reason: str = "requested") -> None:
        """End training after the current step, as if it were the last (checkpoint, final evaluation);
        for callbacks (``reason``: see :class:`Callback`). Under DDP every rank must request it at the same step."""
        self._stop_requested = reason

    def log(self, scalars: Mapping[str, float]) -> None:
        """Add ``scalars`` to metrics.csv and the trackers at the current step; a no-op outside
        ``fit``, without a run directory, or on ranks other than 0."""
        self.loggers.log_scalars(self.step, {k: float(v) for k, v in scalars.items()})

    # -- checkpoints ---------------------------------------------------------------------------
    def train_state(self, pending: list[float] | None = None) -> TrainState:
        """What a resume needs of this trainer; ``pending``: the log window's losses (default: this rank's)."""
        ema = self.ema
        return TrainState(
            step=self.step, finished=self.finished, model=self.model.state_dict(), rng=rng_state(self.device),
            optimizer=self.optimizer.state_dict(), data=self.stream.position(), seed=self.seed,
            ema=ema.model.state_dict() if ema else None, ema_updates=ema.num_updates if ema else 0,
            pending_losses=self.window.pending(1) if pending is None else pending, world_size=self.dist.world_size,
            fingerprint=self.fingerprint, lineage=self.lineage, provenance=self.provenance,
            stopped=stopping.stop_record(self.step, self.opts.steps, self.stopped_early))

    def save_checkpoint(self) -> Path | None:
        """A checkpoint of this step (rank 0 writes; a collective: every rank saves at the same steps)."""
        # each rank's RNG differs, and only rank 0's is stored: the others re-derive theirs on resume
        pending, path = self.window.pending(self.dist.world_size), None
        if self.run_dir is not None and self.is_main:
            try:
                path = ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step,
                                            self.train_state(pending).to_checkpoint(), keep=self.opts.keep_checkpoints)
            except OutputError as exc:  # a full disk: say how to go on once there is room
                raise self.hints.then_resume(exc, self.run_dir) from None
            for cb in self.callbacks:
                cb.on_checkpoint(self, self.step, path)
        distributed.barrier(self.dist.world_size)
        return path

    def resume(self, path: Path | None = None) -> None:
        """Go on from a checkpoint (default: the run's latest): see :meth:`load_state`."""
        if path is None and self.run_dir is None:
            raise CheckpointError("resume needs a run directory or a checkpoint path")
        self.load_state(ckpt.load_resolved(path or self.run_dir)[1], where=str(path or self.run_dir))

    def load_state(self, state: TrainState | ckpt.CheckpointData, where: str = "checkpoint") -> None:
        """Put this trainer where ``state`` (or a checkpoint's data, read from ``where``) was: weights, EMA,
        optimizer, random streams, step, log window and data position; its fingerprint and weights checked first."""
        if isinstance(state, ckpt.CheckpointData):
            state = TrainState.from_checkpoint(state, where)
        state.check_fingerprint(self.fingerprint, where, self.hints)
        load_model_state(self.model, state.model, where, fix=self.hints.model)
        if self.ema is not None:
            weights = state.model if state.ema is None else state.ema  # a checkpoint of a run without EMA
            load_model_state(self.ema.model, weights, where, fix=self.hints.model)
            self.ema.num_updates = state.ema_updates
        state.load_optimizer(self.optimizer, where)
        state.restore_rng(self.seed, self.dist.rank, self.dist.world_size, self.device)
        self.step, self.finished, self.lineage = state.step, state.finished, state.lineage
        self.window = LogWindow(torch.tensor(v, dtype=torch.float32, device=self.device) for v in state.pending_losses)
        self.stream.close()  # the data from the stored position on
        self.stream = self._make_stream(int(state.data.get("epoch", 0)), resume_index(state.data, self.opts.grad_accum))

    # -- sampling and evaluation ---------------------------------------------------------------
    def sampling_model(self) -> nn.Module:
        """The model that samples: see :meth:`Evaluator.sampling_model`."""
        return self.evaluator.sampling_model(self.model, ema=self.ema.model if self.ema is not None else None)

    def sample(self, n: int, solver: Solver | None = None, seed: int = 0, distributed: bool = False) -> State:
        """``n`` samples of :meth:`sampling_model`, sizes/conditions drawn from the data; ``distributed=True``
        (every rank calls) splits the chunks over the DDP ranks: each gets the ``n`` one process would draw."""
        return self.evaluator.sample(self.sampling_model(), n, solver, seed, distributed)

    def evaluate(self) -> dict[str, float]:
        """Sample (split over the DDP ranks), compute metrics, write artefacts; returns the metrics (rank 0).
        On one process a stop signal ends it at once (:class:`stopping.TrainingInterrupted`)."""
        self.signals.evaluating = self.dist.world_size == 1  # under DDP the other ranks are in its collectives
        try:
            self._evaluated_at = self.step
            results = self.evaluator.run(self.sampling_model(), self.step, self.log, media=self.loggers.log_media)
            if self.is_main:
                for cb in self.callbacks:
                    cb.on_eval_end(self, self.step, results)
            distributed.barrier(self.dist.world_size)
        finally:
            self.signals.evaluating = False
        self.evaluator.mark_finished(self.step)
        return results
