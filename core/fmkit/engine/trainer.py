"""The one CFM training engine, for every modality.

One step (Lipman et al. 2022, eq. 23; Tong et al. 2023 for the coupling):
x1 ~ data, x0 ~ p_0, (x0, x1) <- coupling, t ~ p(t), (x_t, u_t) <- path,
loss = sum_fields w_f * masked MSE(v_theta(x_t, t, c), u_t) (cross-entropy for categorical fields).
Couplings that are CPU work (``Coupling.host``) draw x0 and pair in the data pipeline instead
(:mod:`fmkit.engine.stream`), overlapping the step.

Around it: AdamW with warmup + cosine, gradient clipping and accumulation, EMA of the weights, bf16
autocast on CUDA, optional torch.compile, DDP under torchrun, crash-safe checkpoints with exact
resume, periodic evaluation (samples, metrics, artefacts), ``metrics.csv`` (and TensorBoard when
installed), a progress bar, and clean stops on SIGINT/SIGTERM and on a non-finite loss.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fmkit.engine import checkpoint as ckpt
from fmkit.engine.distributed import (
    SAMPLING_STREAM,
    DistInfo,
    StopVote,
    all_gather_objects,
    all_reduce_mean,
    dist_info,
    fold_seed,
    init_from_env,
    seed_generators,
    seed_shard,
)
from fmkit.engine.metrics_log import MetricsLogger, ProgressBar
from fmkit.engine.options import EvalOptions, TrainerOptions
from fmkit.engine.runlock import RunLock
from fmkit.engine.stream import BatchStream, LoaderPairing, resume_index, usable_cores
from fmkit.errors import CheckpointError, ContractError, ModelError, NonFiniteDataError, OutputError, TrainingError
from fmkit.flow.couplings import Coupling, IndependentCoupling, draw_and_pair
from fmkit.flow.data import Dataset
from fmkit.flow.guidance import ClassifierFreeGuidance, drop_condition
from fmkit.flow.paths import AffinePath, CondOTScheduler, ProbPath, StatePath
from fmkit.flow.sampling import generate
from fmkit.flow.solvers import FixedStepSolver, Solver, check_continuous_only
from fmkit.flow.sources import GaussianSource, Source, StateSource
from fmkit.flow.state import State, fields, pin, to_channels_last, to_device
from fmkit.flow.time_sampling import sample_time

#: the step of the last evaluation that ran to its end, so a resume can finish one a signal ended
EVALUATED_FILE = "evaluated.json"

Metric = Callable[[State, Dataset], Mapping[str, float]]
Writer = Callable[[State, Path, Dataset, int], Sequence[Path]]


class TrainingInterrupted(TrainingError):
    """Training stopped by a signal after saving a checkpoint."""

    exit_code = 130


class Callback:
    """Hooks into the training loop; override what you need. ``trainer`` gives access to everything;
    ``trainer.log({...})`` adds scalars to metrics.csv at the current step and
    ``trainer.request_stop(reason)`` ends training after this step (with a checkpoint and the final
    evaluation; a later resume continues to ``trainer.steps``). Every rank runs the hooks under DDP.
    """

    def on_train_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, step: int) -> None: ...
    def on_eval_end(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None: ...
    def on_checkpoint(self, trainer: Trainer, step: int, path: Path) -> None: ...
    def on_train_end(self, trainer: Trainer) -> None: ...


class EMA:
    """Exponential moving average of a model's parameters (buffers copied), updated in place.

    The effective decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so short runs
    are not dominated by their random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._src = [p for p in model.parameters()]
        self._dst = [p for p in self.model.parameters()]
        self._src_buf = list(model.buffers())
        self._dst_buf = list(self.model.buffers())

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        torch._foreach_lerp_(self._dst, self._src, 1.0 - d)
        for d, s in zip(self._dst_buf, self._src_buf):
            d.copy_(s)


def lr_factor(step: int, opts: TrainerOptions) -> float:
    """Linear warmup to 1, then cosine to ``min_lr_ratio`` (or constant)."""
    if opts.warmup_steps and step < opts.warmup_steps:
        return (step + 1) / opts.warmup_steps
    if opts.schedule == "constant":
        return 1.0
    span = max(1, opts.steps - opts.warmup_steps)
    prog = min(1.0, (step - opts.warmup_steps) / span)
    return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog))


def set_cpu_threads(opts: TrainerOptions, workers: int = 0) -> None:
    """torch's intra-op threads (process-wide) for CPU work: ``opts.cpu_threads``, else the cores that
    ``workers`` DataLoader processes leave free — threads beyond the free cores wait on each other
    (sampling 48.7 s vs 5.1 s next to one busy core of 2) — else torch's default."""
    threads = opts.cpu_threads
    if threads is None and workers:
        threads = max(1, usable_cores() - workers)
    if threads:
        torch.set_num_threads(threads)


def check_model_signature(model: nn.Module) -> None:
    """The trainer and the samplers call ``model(x_t, t, cond)``: refuse a forward without room for
    three positional arguments up front (it would fail inside the step with a bare TypeError)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 3 and not any(p.kind is p.VAR_POSITIONAL for p in params):
        raise ModelError(f"{type(model).__name__}.forward{inspect.signature(model.forward)} cannot be called as "
                         f"forward(x_t, t, cond)", where="model",
                         fix="define forward(self, x_t, t, cond=None) (it may ignore cond); a network on bare "
                             "tensors can be wrapped in fmkit.TensorModel(net)")


def _options(cls: type, value: Any, name: str) -> Any:
    """``cls`` from None (the defaults), an instance, or a mapping of its fields (validated)."""
    if value is None:
        return cls()
    if isinstance(value, Mapping):
        return cls.model_validate(dict(value))
    if not isinstance(value, cls):
        raise TypeError(f"Trainer's {name} must be a {cls.__name__} or a dict of its fields, "
                        f"got {type(value).__name__}")
    return value


def use_channels_last(model: nn.Module, device: torch.device, option: bool | None) -> bool:
    """``trainer.channels_last``: as set, or (null) on for a CUDA model with 2-D convolutions, where
    cuDNN's NHWC kernels feed the tensor cores without layout transposes; nothing else gains from it."""
    if option is not None:
        return option
    return device.type == "cuda" and any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())


def match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded optimizer moment its parameter's strides. ``load_state_dict`` keeps the
    checkpoint's (contiguous) layout, and the fused AdamW kernel pairs elements by memory order: for a
    channels-last weight it silently mixed up the moments (test_channels_last.py: resume then diverged)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise TrainingError(f"trainer.device {name!r} is not a device torch knows", where="trainer.device",
                            fix="use auto, cpu, cuda or cuda:N (or mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"trainer.device is {name!r} but CUDA is not available on this machine",
                            where="trainer.device",
                            fix="use `--set trainer.device=auto` or cpu (in Python: TrainerOptions(device=\"auto\"))")
    return dev


class Trainer:
    """Trains ``model`` on ``dataset`` by conditional flow matching.

    ``path``/``source`` may be per-field objects (used for every field) or composed State* objects.
    ``run_dir`` is where checkpoints, metrics and artefacts go (nothing is written when None).
    ``fingerprint`` (any JSON-able dict; a recipe's: every option of its model, data, path and
    source) is stored in checkpoints, and resuming from one with another fingerprint is refused.
    ``from_recipe`` says the trainer was built from a recipe (``fmkit.app.run.build_trainer``): error
    messages then give the CLI's fixes, otherwise the library's.
    """

    def __init__(self, model: nn.Module, dataset: Dataset, *, path: ProbPath | StatePath | None = None,
                 source: Source | StateSource | None = None, coupling: Coupling | None = None,
                 solver: Solver | None = None, options: TrainerOptions | None = None,
                 eval_options: EvalOptions | None = None, metrics: Mapping[str, Metric] | None = None,
                 writers: Mapping[str, Writer] | None = None, callbacks: Sequence[Callback] = (),
                 run_dir: str | Path | None = None, seed: int = 0, fingerprint: Mapping[str, Any] | None = None,
                 from_recipe: bool = False):
        self.opts = _options(TrainerOptions, options, "options")
        self.eval_opts = _options(EvalOptions, eval_options, "eval_options")
        self.dataset = dataset
        self.path = path if isinstance(path, StatePath) else StatePath(path or AffinePath(CondOTScheduler()))
        self.source = source if isinstance(source, StateSource) else StateSource({}, source or GaussianSource())
        self.coupling = coupling or IndependentCoupling()
        self.solver = solver or FixedStepSolver("euler", 100)
        # before any training: evaluation would otherwise fail at its first sample, hours in
        check_continuous_only(self.solver, [k for k, f in dataset.info.fields.items() if f.categorical])
        self.metrics = dict(metrics or {})
        self.writers = dict(writers or {})
        self.callbacks = list(callbacks)
        self.seed = seed
        self.fingerprint = dict(fingerprint or {})
        self.from_recipe = from_recipe
        self.run_dir = Path(run_dir) if run_dir is not None else None
        # under torchrun (WORLD_SIZE > 1) a library script need not set up the process group itself
        self.dist = init_from_env(device=self.opts.device) if "WORLD_SIZE" in os.environ else dist_info()
        self.device = pick_device(self.opts.device)
        if self.device.type == "cpu":
            set_cpu_threads(self.opts, workers=self.opts.num_workers)
        if self.dist.world_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.is_main = self.dist.rank == 0
        self.step = 0
        self.lineage: dict[str, Any] | None = None  # trainer.init_from: whose weights this run started from
        self.finished = False
        self._stop_signal: int | None = None  # set by the handler; acted on once the ranks agree (StopVote)
        self._vote: StopVote | None = None  # made by the first fit: under DDP it builds a process group
        self.stopped_early: str | None = None  # the reason given to request_stop, once it stopped a fit
        self._stop_requested: str | None = None
        self._evaluating = False  # a stop signal during an evaluation ends it at once (see _signal_handler)
        self._evaluated_at = -1  # the step of the last evaluate(), so a stop right after one does not repeat it
        self._pending: list[Tensor] = []  # losses of the steps since the last log line
        self._bad_fields: set[str] = set()  # fields in which a coupling met NaN/Inf (DDP: reported at the NaN check)

        o = self.opts
        if o.batch_size % (o.grad_accum * self.dist.world_size):
            raise TrainingError(
                f"trainer.batch_size={o.batch_size} is not divisible by grad_accum x processes = "
                f"{o.grad_accum} x {self.dist.world_size}", where="trainer.batch_size",
                fix="pick a batch size that is a multiple of both")
        self.micro_batch = o.batch_size // o.grad_accum
        unknown = sorted(set(o.loss_weights) - set(dataset.info.fields))
        if unknown:  # a misspelt field would otherwise train with every weight at 1, silently
            raise TrainingError(f"trainer.loss_weights names {unknown}, which the data does not have",
                                where="trainer.loss_weights",
                                fix=f"weigh the data's fields: {sorted(dataset.info.fields)}")
        check_model_signature(model)
        self.model = model.to(self.device)
        self.channels_last = use_channels_last(self.model, self.device, o.channels_last)
        if self.channels_last:  # before the EMA copy and the optimizer state, which keep the same layout
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = EMA(self.model, o.ema_decay) if o.ema_decay else None
        self.train_model: nn.Module = self.model
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # buffers change in training only with running statistics (BatchNorm & co.); fmkit's are
            # constants, and broadcasting them costs a collective per forward, micro-steps included
            running = any(getattr(m, "track_running_stats", False) for m in self.model.modules())
            self.train_model = DDP(self.model, device_ids=ids, broadcast_buffers=running)
        if o.compile:
            self.train_model = torch.compile(self.train_model)  # type: ignore[assignment]
        self._params = list(self.model.parameters())  # for clipping: no module walk per step
        # the fused AdamW kernel (same update, one kernel instead of ~10 ops per tensor): CUDA and CPU
        fused = self.device.type in ("cuda", "cpu") and all(p.is_floating_point() for p in self._params)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=o.betas,
                                           weight_decay=o.weight_decay, fused=fused or None)
        # auto: bf16 on CUDA only; an explicit bf16 autocasts on any device (on the CPU: for checks)
        self.autocast = o.precision == "bf16" or (o.precision == "auto" and self.device.type == "cuda")
        self.null_cond = dataset.info.num_cond_classes  # index of the null class for CFG
        if self.null_cond is None and (o.cond_dropout > 0 or self.eval_opts.guidance_scale is not None):
            key = "trainer.cond_dropout" if o.cond_dropout > 0 else "eval.guidance_scale"
            raise TrainingError(
                f"{key} needs a null class for dropped conditions, and the dataset declares no number of "
                f"condition classes (its info.num_cond_classes is None)", where=key,
                fix="if the data has class labels, declare K condition classes (DataInfo(num_cond_classes=K), "
                    "TensorDataset(data, num_cond_classes=K)): labels are 0..K-1 and the null label is K, so a "
                    "label embedding needs K + 1 rows; otherwise drop cond_dropout/guidance_scale")
        # CPU-bound couplings pair in the data pipeline, ahead of the step (trainer.pairing)
        self.pair_in_loader = o.pairing == "loader" or (o.pairing == "auto" and self.coupling.host)
        self.stream = self._make_stream()
        self.logger: MetricsLogger | None = None

    def _make_stream(self, epoch: int = 0, index: int = 0) -> BatchStream:
        pairing = LoaderPairing(self.source, self.coupling) if self.pair_in_loader else None
        return BatchStream(self.dataset, self.micro_batch, self.seed, self.dist, self.opts.num_workers,
                           pin_memory=self.device.type == "cuda", epoch=epoch, index=index,
                           accum=self.opts.grad_accum, pairing=pairing)

    def next_batch(self) -> tuple[State | None, State]:
        """The next micro-batch on the device: ``(x0, x1)`` with x0 paired already when the data
        pipeline pairs (``trainer.pairing``), else ``(None, x1)``."""
        item = next(self.stream)
        if self.device.type == "cuda" and self.stream.num_workers == 0:
            # a copy from pageable memory waits for the GPU's queue; from pinned memory it overlaps
            # (with workers, the DataLoader pins)
            item = pin(item)
        if isinstance(item, (tuple, list)):  # pinned-memory collation turns the pair into a list
            x0, x1 = item
            return to_device(x0, self.device, non_blocking=True), to_device(x1, self.device, non_blocking=True)
        return None, to_device(item, self.device, non_blocking=True)

    # ------------------------------------------------------------------------------------------
    def _check_writable(self) -> None:
        if self.run_dir is None or not self.is_main:
            return
        # every folder a fit writes into, before the first step: a read-only checkpoints/ found at the
        # first save would cost everything trained until then
        # (a folder not made yet is as writable as the run directory it will be made in)
        folders = [self.run_dir] + [f for f in (self.run_dir / "checkpoints", self.run_dir / "samples") if f.is_dir()]
        for folder in folders:
            what = "the run directory" if folder == self.run_dir else f"the run's {folder.name}/ folder"
            try:
                folder.mkdir(parents=True, exist_ok=True)  # the run directory itself
                probe = folder / f".write-test-{os.getpid()}"
                probe.write_text("ok")
                probe.unlink()
            except OSError as exc:
                raise OutputError(f"cannot write to {what} {folder}: {exc.strerror or exc}", where=str(folder),
                                  fix="pass --out with a directory you can write to" if folder == self.run_dir
                                  else "make it writable (chmod -R u+w RUN) before training: nothing could be "
                                       "saved") from None

    def loss(self, batch: State, x0: State | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """CFM loss of one (micro-)batch already on the device: total and per-field means. ``x0`` is
        the batch's source sample when it was drawn and paired already (see :meth:`next_batch`)."""
        x1 = batch
        if x0 is None:
            x0, x1 = draw_and_pair(self.source, self.coupling, x1)
        if self.channels_last:  # data, noise and OT's re-ordered rows come in NCHW order; x_t follows these
            x0, x1 = to_channels_last(x0), to_channels_last(x1)
        b = next(iter(fields(x1).values())).shape[0]
        o = self.opts
        t = sample_time(b, o.time_sampler, mean=o.time_mean, std=o.time_std, alpha=o.time_alpha, beta=o.time_beta,
                        device=self.device, grid=o.time_grid)
        ps = self.path.sample(x0, x1, t)
        cond = drop_condition(x1.get("cond"), self.opts.cond_dropout, self.null_cond or 0)
        x_t = {k: v for k, v in ps.x_t.items() if k != "cond"}
        try:
            if self.autocast:
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    pred = self.train_model(x_t, t, cond)
            else:  # entering a disabled autocast context still costs a few microseconds per step
                pred = self.train_model(x_t, t, cond)
        except RuntimeError as exc:
            self._explain_dtype_mismatch(x_t, exc)
            raise
        per_field = self.path.losses(pred, ps, x1, reduce=True)
        w = self.opts.loss_weights
        total: Tensor | None = None
        for k, v in per_field.items():  # no 0 + 1.0 * v ops (and their backward) for the usual weights
            wv = v if w.get(k, 1.0) == 1.0 else w[k] * v
            total = wv if total is None else total + wv
        return total, per_field  # type: ignore[return-value]

    def _explain_dtype_mismatch(self, x_t: State, exc: RuntimeError) -> None:
        """After the model failed: if the data's float dtype differs from the weights' (float64 data from
        numpy and a float32 net, say), say so instead of torch's bare "mat1 and mat2" message."""
        weights = next((p.dtype for p in self._params if p.is_floating_point()), None)
        data = {k: v.dtype for k, v in fields(x_t).items() if v.is_floating_point() and v.dtype != weights}
        if weights is not None and data:
            raise ModelError(f"the model failed on data of dtype {data} with weights of dtype {weights}: {exc}",
                             where="data / model dtype",
                             fix=f"cast one to the other: the data (e.g. tensor.to({weights})) or the model "
                                 f"(model.to({next(iter(data.values()))}))") from exc

    def _signal_handler(self, signum: int, frame: Any) -> None:
        if self._evaluating:  # sampling can take minutes: a scheduler's SIGTERM is followed by SIGKILL
            self._evaluating = False
            raise TrainingInterrupted(
                f"training stopped by {signal.Signals(signum).name} during the evaluation at step {self.step}; the "
                "checkpoint of this step is kept and the evaluation was not finished",
                where=str(self.run_dir) if self.run_dir else None,
                fix=(self._resume_hint() + " runs the evaluation") if self.run_dir else None)
        if self._stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the step to end
        self._stop_signal = signum

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._stop_signal = None  # a signal that stopped an earlier fit is spent
        # SIGHUP: the terminal of an interactive run closed (it killed the run without a checkpoint)
        old = {s: signal.signal(s, self._signal_handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def fit(self, resume: bool | str | Path = False, until: int | None = None) -> Trainer:
        """Train to ``options.steps``; ``resume=True`` continues from the run directory's latest
        checkpoint, a path resumes from that checkpoint. ``until`` stops early at that step (with a
        checkpoint), keeping the schedule of the full run — a later ``fit(resume=True)`` continues.
        The run directory is locked for the fit (:class:`fmkit.engine.runlock.RunLock`): a second trainer of
        the same run is refused, naming the first."""
        self._check_writable()
        lock = RunLock(self.run_dir) if self.run_dir is not None and self.is_main else None
        if lock is not None:
            lock.acquire()
        try:
            return self._fit(resume, until)
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, resume: bool | str | Path, until: int | None) -> Trainer:
        self.stopped_early = None
        self._bad_fields = set()
        if resume:
            self.resume(None if resume is True else Path(resume))
        elif self.run_dir is not None and ckpt.complete_checkpoints(self.run_dir / "checkpoints"):
            raise TrainingError(
                "the run directory already holds checkpoints; training from step 0 would replace them and "
                "its metrics.csv", where=str(self.run_dir),
                fix="continue that run with fit(resume=True) (`fmkit train --resume`), or use another run_dir")
        else:
            seed_generators(self.seed + 7919 * self.dist.rank, self.device)  # torch.manual_seed visits every GPU
            if self.opts.init_from and self.lineage is None:  # a fresh run only: a resumed one has its own weights
                from fmkit.engine.lineage import init_from_run, write_lineage

                self.lineage = init_from_run(self.model, self.opts.init_from, self.opts.init_from_ema)
                if self.ema is not None:
                    self.ema.model.load_state_dict(self.model.state_dict())
                if self.run_dir is not None and self.is_main:
                    write_lineage(self.run_dir, self.lineage)
        if self.step >= self.opts.steps and self._evaluation_pending():  # stopped during its final evaluation
            if self.run_dir is not None and self.is_main:
                self.logger = MetricsLogger(self.run_dir, truncate_after=self.step)
            try:
                with self._signals():
                    self.evaluate()
            finally:
                if self.logger is not None:
                    self.logger.close()
                    self.logger = None
            return self
        if self.step >= self.opts.steps:
            raise TrainingError(
                f"this run already finished: it is at step {self.step} of trainer.steps={self.opts.steps}",
                where=str(self.run_dir) if self.run_dir else None,
                fix=f"to train longer, resume with a larger budget, e.g. --set trainer.steps={self.opts.steps * 2} "
                    f"(in Python: TrainerOptions(steps={self.opts.steps * 2}) and fit(resume=True))")
        if self.run_dir is not None and self.is_main:
            self.logger = MetricsLogger(self.run_dir, truncate_after=self.step)
        for cb in self.callbacks:
            cb.on_train_start(self)
        try:
            with self._signals():
                self._loop(min(until, self.opts.steps) if until is not None else self.opts.steps)
        except torch.cuda.OutOfMemoryError:
            raise TrainingError(
                f"CUDA ran out of memory at step {self.step} with a micro-batch of {self.micro_batch}",
                where="trainer.batch_size / trainer.grad_accum",
                fix=f"lower the per-step memory: e.g. --set trainer.grad_accum={self.opts.grad_accum * 2} "
                    f"(same effective batch) or a smaller trainer.batch_size") from None
        finally:
            if self.logger is not None:
                self.logger.close()
                self.logger = None
        if self.step >= self.opts.steps:
            self.stream.close()  # the DataLoader workers are done
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self

    def _loop(self, stop: int) -> None:
        o = self.opts
        check_every = 1 if self.device.type == "cpu" else o.log_every
        bar = ProgressBar(o.steps, start=self.step, enabled=o.progress and self.is_main)
        # on a CPU the step losses are on the host already (checked every step): the bar shows this log
        # window's mean so far at every step, not only at log steps (the GPU recipe on a CPU: 30 s a step)
        live_loss = bar.enabled and check_every == 1
        pending = self._pending  # this log window's step losses (kept in checkpoints: see load_state)
        last_log_time, last_log_step = time.perf_counter(), self.step
        wait = 0.0  # host seconds spent waiting for batches since the last log step
        aside = 0.0  # seconds of checkpoints and evaluations since then: not training, kept out of steps/s
        if self._vote is None:
            self._vote = StopVote(self.dist.world_size)
        vote = self._vote
        try:
            with bar:
                while self.step < stop:
                    for g in self.optimizer.param_groups:
                        g["lr"] = o.lr * lr_factor(self.step, o)
                    mean_loss, batch, waited = self._gradients()
                    wait += waited
                    if (self.step + 1) % check_every == 0 and not self._finite(mean_loss):
                        self._non_finite(batch, check_every)
                    grad_norm = None
                    if o.grad_clip:
                        grad_norm = torch.nn.utils.clip_grad_norm_(self._params, o.grad_clip)
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                    if self.ema is not None:
                        self.ema.update()
                    self.step += 1
                    pending.append(mean_loss)
                    if self.step % o.log_every == 0 or self.step == o.steps:
                        losses = all_reduce_mean(torch.stack(pending).float(), self.dist.world_size)  # global mean
                        if not torch.isfinite(losses).all().item():
                            self._non_finite(batch, check_every)
                        now = time.perf_counter()
                        busy = max(now - last_log_time - aside, 1e-9)  # wall time spent training
                        sps = (self.step - last_log_step) / busy
                        # data_wait: share of the wall time the host waited for the data pipeline (its
                        # loader workers, pairing included); near 0 means the step, not the data, sets the pace
                        scal = {"loss": float(losses.mean()), "lr": self.optimizer.param_groups[0]["lr"],
                                "steps_per_s": sps, "samples_per_s": sps * o.batch_size,
                                "data_wait": wait / busy}
                        last_log_time, last_log_step, wait, aside = now, self.step, 0.0, 0.0
                        if self.device.type == "cuda":
                            scal["peak_mem_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
                        if grad_norm is not None:
                            scal["grad_norm"] = float(grad_norm)
                        pending.clear()
                        bar.update(self.step, scal["loss"], sps)
                        if self.logger:
                            self.logger.log(self.step, scal)
                    elif live_loss:  # this rank's losses: the global mean comes at the log step
                        bar.update(self.step, float(torch.stack(pending).mean()))
                    else:
                        bar.update(self.step)
                    for cb in self.callbacks:
                        cb.on_step_end(self, self.step)
                    done = self.step == o.steps
                    t_aside = time.perf_counter()
                    saved = self.step % o.checkpoint_every == 0 or self.step == stop  # a stop below needs no other
                    if saved:
                        self.finished = done
                        self.save_checkpoint()
                    if self.eval_opts.every and self.step % self.eval_opts.every == 0 and not done:
                        self.evaluate()
                    aside += time.perf_counter() - t_aside
                    if self._stop_requested is not None and not done:
                        if not saved:
                            self.save_checkpoint()
                        self.stopped_early, self._stop_requested = self._stop_requested, None
                        break
                    stop_signal = vote(self._stop_signal or 0)  # under DDP: the same step on every rank
                    if stop_signal:
                        if not saved:
                            self.save_checkpoint()
                        name = signal.Signals(stop_signal).name
                        raise TrainingInterrupted(
                            f"training stopped by {name} at step {self.step}; a checkpoint of this step was saved",
                            where=str(self.run_dir) if self.run_dir else None,
                            fix=self._resume_hint() if self.run_dir else None)
        except TrainingInterrupted:  # agreed by every rank: no vote is in flight
            raise
        except BaseException:  # maybe on this rank alone: its vote in flight is abandoned with it
            self._vote = None
            raise
        vote.finish()  # the last step's vote, which every rank posted
        if (self.metrics or self.writers) and (self.step == o.steps or self.stopped_early is not None) \
                and self._evaluated_at != self.step:
            self.evaluate()

    def _gradients(self) -> tuple[Tensor, State, float]:
        """Forward and backward over this step's ``grad_accum`` micro-batches: their mean loss (on the
        device, not synced), the last micro-batch and the seconds spent waiting for the data."""
        o = self.opts
        loss_sum: Tensor | None = None
        batch: State = {}
        waited = 0.0
        for micro in range(o.grad_accum):
            t_wait = time.perf_counter()
            x0, batch = self.next_batch()
            waited += time.perf_counter() - t_wait
            # shard m * world + rank draws from its own (seed, step, shard) stream: see distributed.py
            seed_shard(self.seed, self.step, micro * self.dist.world_size + self.dist.rank, self.device)
            sync = micro == o.grad_accum - 1 or self.dist.world_size == 1
            ctx = self.train_model.no_sync() if not sync and hasattr(self.train_model, "no_sync") \
                else contextlib.nullcontext()
            with ctx:
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
        mean_loss = loss_sum / o.grad_accum if o.grad_accum > 1 else loss_sum
        return mean_loss, batch, waited  # type: ignore[return-value]

    def request_stop(self, reason: str = "requested") -> None:
        """End training after the current step, as if it were the last (checkpoint, final evaluation);
        for callbacks (early stopping). Under DDP every rank must request it at the same step."""
        self._stop_requested = reason

    def log(self, scalars: Mapping[str, float]) -> None:
        """Add ``scalars`` to metrics.csv (and TensorBoard) at the current step; a no-op outside
        ``fit``, without a run directory, or on ranks other than 0."""
        if self.logger is not None:
            self.logger.log(self.step, {k: float(v) for k, v in scalars.items()})

    def _resume_hint(self) -> str:
        """How to continue this run: the CLI's command for a run built from a recipe, else the library call."""
        if self.from_recipe:
            return f"resume with `fmkit train --resume {self.run_dir}`"
        return "resume with `trainer.fit(resume=True)` (same run_dir)"

    def _finite(self, loss: Tensor) -> bool:
        """Whether the step's loss is finite; under DDP all ranks decide on the mean, so they stop together."""
        if self.dist.world_size > 1:
            loss = all_reduce_mean(loss.clone(), self.dist.world_size)
        return math.isfinite(loss.item())

    def _non_finite(self, batch: State, check_every: int) -> None:
        """Stop on NaN/Inf: name the batch's bad fields (or blame divergence) and keep the last good state."""
        bad = {k for k, v in fields(batch).items() if v.is_floating_point() and not torch.isfinite(v).all()}
        bad |= self._bad_fields  # met by the coupling on this rank
        if self.dist.world_size > 1:  # every rank is here at the same step (the NaN checks are collective):
            bad = set().union(*all_gather_objects(sorted(bad), self.dist.world_size))  # one diagnosis for all
        bad_fields = sorted(bad)
        if self.run_dir is None:
            saved = "nothing was saved (the trainer has no run_dir)"
        elif check_every == 1:
            saved = f"the last good state (before step {self.step + 1}) was saved as a checkpoint"
            self.save_checkpoint()
        else:
            saved = "the last good checkpoint on disk is kept (the weights in memory may be corrupt)"
        cause = (f"the batch holds NaN/Inf in field(s) {bad_fields}: the data is broken" if bad_fields
                 else "the model or optimizer diverged")
        raise TrainingError(
            f"the loss became NaN/Inf at step {self.step + 1}; {cause}; {saved}",
            where=str(self.run_dir) if self.run_dir else None,
            fix="clean the data" if bad_fields else "lower trainer.lr, keep trainer.grad_clip set, or add warmup")

    # ------------------------------------------------------------------------------------------
    def checkpoint_data(self, pending: list[float] | None = None) -> ckpt.CheckpointData:
        """What a checkpoint holds; ``pending``: the current log window's losses (default this rank's)."""
        opt_t, opt_extra = ckpt.optimizer_to_flat(self.optimizer.state_dict())
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        tensors = {"model": dict(self.model.state_dict()), "optimizer": opt_t, "rng": rng}
        if self.ema is not None:
            tensors["ema"] = dict(self.ema.model.state_dict())
        meta = {"step": self.step, "finished": self.finished, "data": self.stream.position(),
                "optimizer": opt_extra, "fingerprint": self.fingerprint, "seed": self.seed,
                "world_size": self.dist.world_size,
                "ema_updates": self.ema.num_updates if self.ema is not None else 0,
                # a stop between log steps: the resumed run's next log line averages the same steps
                "pending_losses": pending if pending is not None else [float(v) for v in self._pending],
                "params": {k: list(v.shape) for k, v in self.model.state_dict().items()},
                "lineage": self.lineage}
        return ckpt.CheckpointData(tensors, meta)

    def save_checkpoint(self) -> Path | None:
        # the log window's losses so far, averaged over ranks as the log line will be (a collective:
        # every rank saves at the same steps); each rank's RNG differs, and only rank 0's is stored:
        # the others re-derive theirs on resume
        pending = None
        if self.dist.world_size > 1 and self._pending:
            pending = all_reduce_mean(torch.stack(self._pending).float(), self.dist.world_size).tolist()
        if self.run_dir is None or not self.is_main:
            self._barrier()
            return None
        path = ckpt.save_checkpoint(self.run_dir / "checkpoints", self.step, self.checkpoint_data(pending),
                                    keep=self.opts.keep_checkpoints)
        for cb in self.callbacks:
            cb.on_checkpoint(self, self.step, path)
        self._barrier()
        return path

    def _barrier(self) -> None:
        if self.dist.world_size > 1:
            torch.distributed.barrier()

    def resume(self, path: Path | None = None) -> None:
        """Restore model, EMA, optimizer, RNG and data position from a checkpoint."""
        if path is None:
            if self.run_dir is None:
                raise CheckpointError("resume needs a run directory or a checkpoint path")
            path = self.run_dir
        _, data = ckpt.load_resolved(path)
        self.load_state(data, where=str(path))

    def load_state(self, data: ckpt.CheckpointData, where: str = "checkpoint") -> None:
        meta = data.meta
        theirs = meta.get("fingerprint") or {}
        if self.fingerprint:  # every key either side recorded (a recipe's: model, data, path, source), each named
            keys = tuple(dict.fromkeys([*self.fingerprint, *theirs]))
            if self.from_recipe:
                ckpt.check_fingerprint(theirs, self.fingerprint, where, sections=keys)
            else:
                ckpt.check_fingerprint(theirs, self.fingerprint, where, sections=keys,
                                       ours_label="this trainer's fingerprint",
                                       fix="pass the fingerprint the run was started with, or use another run_dir")
        model_fix = None if self.from_recipe else "build the model the checkpoint was trained with"
        load_model_state(self.model, data.tensors["model"], where, fix=model_fix)
        if self.ema is not None:
            load_model_state(self.ema.model, data.tensors.get("ema", data.tensors["model"]), where, fix=model_fix)
            self.ema.num_updates = int(meta.get("ema_updates", meta["step"]))
        try:
            self.optimizer.load_state_dict(ckpt.optimizer_from_flat(data.tensors.get("optimizer", {}),
                                                                    meta["optimizer"]))
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the optimizer state does not fit this model: {exc}", where=where,
                                  fix="resume with the recipe the run was started with") from None
        match_param_layouts(self.optimizer)
        rng = data.tensors.get("rng", {})
        if "cpu" in rng and self.dist.world_size == 1:
            torch.set_rng_state(rng["cpu"])
        else:
            torch.manual_seed(self.seed + 7919 * self.dist.rank + 104729 * int(meta["step"]))
        if "cuda" in rng and self.device.type == "cuda" and self.dist.world_size == 1:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.step = int(meta["step"])
        self.finished = bool(meta.get("finished", False))
        self.lineage = meta.get("lineage", self.lineage)
        self._pending = [torch.tensor(v, dtype=torch.float32, device=self.device)
                         for v in meta.get("pending_losses", [])]
        pos = meta.get("data", {})
        self.stream.close()
        self.stream = self._make_stream(int(pos.get("epoch", 0)), resume_index(pos, self.opts.grad_accum))

    # ------------------------------------------------------------------------------------------
    def sampling_model(self) -> nn.Module:
        m = self.ema.model if (self.ema is not None and self.eval_opts.use_ema) else self.model
        if self.eval_opts.guidance_scale is not None and self.null_cond is not None:
            return ClassifierFreeGuidance(m, self.eval_opts.guidance_scale, self.null_cond)
        return m

    @torch.no_grad()
    def sample(self, n: int, solver: Solver | None = None, seed: int = 0, distributed: bool = False) -> State:
        """``n`` samples with the EMA model (if any), sizes/conditions drawn from the data.

        ``distributed=True`` (every rank must call it then) splits the chunks over the DDP ranks and
        gathers them: every rank gets the same ``n`` samples a single process would draw."""
        model = self.sampling_model()
        was_training = model.training
        model.eval()
        rng = torch.get_rng_state()
        torch.manual_seed(seed)
        try:
            return sample_in_chunks(model, self.path, self.source, solver or self.solver, self.dataset, n,
                                    self.eval_opts.batch_size, self.device, seed,
                                    dist=self.dist if distributed else None)
        finally:
            torch.set_rng_state(rng)
            model.train(was_training)

    def _evaluation_pending(self) -> bool:
        """Whether this finished run's final evaluation never completed (a stop signal ended it)."""
        if self.run_dir is None or not (self.metrics or self.writers):
            return False
        try:
            done = json.loads((self.run_dir / EVALUATED_FILE).read_text()).get("step")
        except (OSError, ValueError, AttributeError):
            done = None
        return done != self.step

    def evaluate(self) -> dict[str, float]:
        """Sample (split over the DDP ranks), compute metrics, write artefacts; returns the metrics (rank 0).
        On one process a stop signal ends it at once (:class:`TrainingInterrupted`)."""
        self._evaluating = self.dist.world_size == 1  # under DDP the other ranks are in its collectives
        try:
            results = self._evaluate()
        finally:
            self._evaluating = False
        if self.run_dir is not None and self.is_main:
            ckpt.write_atomic_text(self.run_dir / EVALUATED_FILE, json.dumps({"step": self.step}) + "\n")
        return results

    def _evaluate(self) -> dict[str, float]:
        self._evaluated_at = self.step
        samples = self.sample(self.eval_opts.num_samples, distributed=True)
        if not self.is_main:
            self._barrier()
            return {}
        if self.run_dir is not None:  # the samples first: a metric or writer that fails loses nothing
            out = self.run_dir / "samples"
            out.mkdir(parents=True, exist_ok=True)
            ckpt.save_tensors({k: v.contiguous() for k, v in samples.items()},
                              out / f"samples_step{self.step:07d}.safetensors")
        results: dict[str, float] = {}

        def score(name: str, metric: Metric) -> None:
            for k, v in metric(samples, self.dataset).items():
                try:
                    results[k] = float(v)
                except (TypeError, ValueError):
                    raise ContractError(f"metric {name!r} returned {k!r} = {type(v).__name__} "
                                        f"{tuple(getattr(v, 'shape', ()))}, not a number", where=f"metric {name!r}",
                                        fix="a metric returns {name: float} (a Python float or a one-element tensor)"
                                        ) from None

        failed = each(self.metrics, score)
        if self.run_dir is not None:
            failed = each(self.writers, lambda _, writer: writer(samples, out, self.dataset, self.step)) or failed
        if self.logger is not None and results:
            self.logger.log(self.step, {f"eval/{k}": v for k, v in results.items()})
        if failed is not None:
            raise failed
        for cb in self.callbacks:
            cb.on_eval_end(self, self.step, results)
        self._barrier()
        return results


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


def load_model_state(model: nn.Module, state: Mapping[str, Tensor], where: str, fix: str | None = None) -> None:
    """Load weights, explaining any mismatch of names or shapes instead of a raw traceback."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(state[k].shape)} in checkpoint vs {tuple(own[k].shape)} in model" for k in wrong[:5]))
        if missing:
            parts.append(f"missing in checkpoint: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"not in this model: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise CheckpointError("the checkpoint's weights do not fit this model (" + "; ".join(parts) + ")",
                              where=where,
                              fix=fix or "use the recipe the checkpoint was trained with (its run's recipe.yaml)")
    model.load_state_dict(dict(state))


@torch.no_grad()
def sample_in_chunks(model: nn.Module, path: StatePath, source: StateSource, solver: Solver, dataset: Dataset,
                     n: int, chunk: int, device: torch.device, seed: int = 0, dist: DistInfo | None = None) -> State:
    """Generate ``n`` samples in chunks of ``chunk``; returns CPU tensors.

    Chunk k draws from its own random stream (seed, k), so the samples do not depend on how the
    chunks are spread: with ``dist`` (a DDP run; every rank calls this), rank r generates chunks
    r, r + world, ... and all ranks receive all ``n`` samples (all_gather)."""
    rank, world = (dist.rank, dist.world_size) if dist is not None else (0, 1)
    starts = list(range(0, n, chunk))
    parts: dict[int, State] = {}
    for k in range(rank, len(starts), world):
        m = min(chunk, n - starts[k])
        seed_generators(fold_seed(seed, SAMPLING_STREAM, k), device)
        template = to_device(dataset.template(m, seed=seed + starts[k]), device)
        sol = generate(model, path, source, solver, template)
        parts[k] = {f: v.cpu() for f, v in sol.x.items()}
    if world > 1:
        parts = {k: v for got in all_gather_objects(parts, world) for k, v in got.items()}
    return _concat([parts[k] for k in range(len(starts))])


def _concat(parts: list[State]) -> State:
    out: State = {}
    for k in parts[0]:
        vals = [p[k] for p in parts]
        if vals[0].dim() >= 2 and len({v.shape[1] for v in vals}) > 1:  # pad variable sizes (dim 1)
            n = max(v.shape[1] for v in vals)
            vals = [torch.nn.functional.pad(v, [0, 0] * (v.dim() - 2) + [0, n - v.shape[1]]) for v in vals]
        out[k] = torch.cat(vals)
    return out
