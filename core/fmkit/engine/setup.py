"""Where and how a model trains: device, CPU threads, its call signature, memory layout, the
DDP / torch.compile wrappers around it, and the objective it minimises."""

from __future__ import annotations

import functools
import inspect
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fmkit.engine.checkpoint import has_checkpoint
from fmkit.engine.distributed import DistInfo
from fmkit.engine.host_memory import keep_freed_memory
from fmkit.engine.options import CFMObjectiveOptions, MeanFlowObjectiveOptions, ObjectiveOptions, TrainerOptions
from fmkit.engine.stream import usable_cores
from fmkit.errors import ModelError, OutputError, TrainingError
from fmkit.flow.couplings import Coupling
from fmkit.flow.data import DataInfo
from fmkit.flow.guidance import NULL_CLASS_FIX
from fmkit.flow.objectives import CFMObjective, MeanFlowObjective, Objective
from fmkit.flow.paths import StatePath
from fmkit.flow.sources import StateSource
from fmkit.flow.time_sampling import sample_time
from fmkit.flow.guidance_input import GuidanceEmbedding
from fmkit.flow.two_times import IntervalEmbedding


def pick_device(name: str) -> torch.device:
    """``trainer.device``: auto (CUDA when there is one), or a name torch knows, refused when absent."""
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



def _non_idle_ticks() -> int | None:
    """Clock ticks all CPUs spent busy since boot (``/proc/stat``: user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError, IndexError):
        return None
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def busy_cores(window_s: float = 0.5) -> int:
    """Cores other processes keep busy now, rounded: the CPU time all processes use during ``window_s``
    seconds, while this one sleeps (``/proc/stat``); the 1-minute load average where that is not
    available (it would count this process's own start-up too)."""
    t0 = _non_idle_ticks()
    if t0 is not None:
        start = time.perf_counter()
        time.sleep(window_s)
        t1, wall = _non_idle_ticks(), time.perf_counter() - start
        if t1 is not None and wall > 0:
            return max(0, round((t1 - t0) / (os.sysconf("SC_CLK_TCK") * wall)))
    try:
        return max(0, round(os.getloadavg()[0]))
    except (OSError, AttributeError):
        return 0


def default_cpu_threads(workers: int = 0) -> int:
    """The intra-op threads of a recipe with ``cpu_threads: null``: ``FMKIT_CPU_THREADS`` when set, else this
    process's share of the usable cores (split between the ranks torchrun started on this machine) less the
    ``workers`` DataLoader processes and the cores other processes keep busy (:func:`busy_cores`, half a
    second's look when the command starts), at least 1.
    Threads beyond the free cores wait on each other for the cores others hold: the measurement behind this
    rule is in docs/recipes.md (``cpu_threads``) and bench/results/threads.md."""
    env = os.environ.get("FMKIT_CPU_THREADS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise TrainingError(f"FMKIT_CPU_THREADS={env!r} is not a positive whole number",
                                where="environment variable FMKIT_CPU_THREADS",
                                fix="set it to a thread count such as 1, or unset it for the automatic choice")
        return int(env)
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    ranks = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, usable_cores() // ranks - workers - busy_cores())


def set_cpu_threads(opts: TrainerOptions, workers: int = 0) -> int:
    """Set torch's intra-op threads (process-wide) for CPU work and return them: ``opts.cpu_threads``, else
    :func:`default_cpu_threads` (docs/recipes.md, ``cpu_threads``). Also keeps freed tensors' memory in the
    process (:func:`~fmkit.engine.host_memory.keep_freed_memory`): else the kernel zeroes every page again."""
    keep_freed_memory()
    threads = opts.cpu_threads or default_cpu_threads(workers)
    torch.set_num_threads(threads)
    return threads


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


def coerce_options(cls: type, value: Any, name: str) -> Any:
    """``cls`` from None (the defaults), an instance, or a mapping of its fields (validated)."""
    if value is None:
        return cls()
    if isinstance(value, Mapping):
        return cls.model_validate(dict(value))
    if not isinstance(value, cls):
        raise TypeError(f"Trainer's {name} must be a {cls.__name__} or a dict of its fields, "
                        f"got {type(value).__name__}")
    return value


def use_channels_last(model: nn.Module, device: torch.device, option: bool | None,
                      objective: Objective | None = None) -> bool:
    """``trainer.channels_last``: as set, or (null) on for a CUDA model with 2-D convolutions, where
    cuDNN's NHWC kernels feed the tensor cores without layout transposes; nothing else gains from it.
    Off (null) or refused (true) for an objective that says ``channels_last = False`` (MeanFlow: torch
    has no forward-mode derivative of GroupNorm on channels-last tensors)."""
    if getattr(objective, "channels_last", True) is False:
        if option:
            raise TrainingError(f"trainer.channels_last is true, and the objective {type(objective).__name__} "
                                "cannot run on channels-last tensors (its forward-mode JVP fails there)",
                                where="trainer.channels_last", fix="set trainer.channels_last: null (or false)")
        return False
    if option is not None:
        return option
    return device.type == "cuda" and any(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in model.modules())



def wrap_for_training(model: nn.Module, dist: DistInfo, device: torch.device, compile: bool,
                      objective: Objective | None = None) -> nn.Module:
    """The module the step calls: ``model`` (or the ``objective``'s ``training_module`` of it, e.g.
    MeanFlow's JVP inside the forward) under DDP when there are several processes, compiled when asked
    (the plain ``model`` keeps the weights, checkpoints and EMA).

    Args:
        model: the bare model, already on ``device``.
        dist: this process's rank and world size; DDP wraps when the world size is above 1.
        device: the model's device; a CUDA one is the DDP device id.
        compile: ``trainer.compile``: wrap the result in ``torch.compile``.
        objective: the run's objective; its ``training_module`` (when it has one) wraps ``model`` first.

    Returns:
        The module the training step calls, sharing its parameters with ``model``.
    """
    wrap = getattr(objective, "training_module", None)
    train_model = wrap(model) if wrap is not None else model
    if dist.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        # buffers change in training only with running statistics (BatchNorm & co.); fmkit's are
        # constants, and broadcasting them costs a collective per forward, micro-steps included
        running = any(getattr(m, "track_running_stats", False) for m in model.modules())
        train_model = DDP(train_model, device_ids=ids, broadcast_buffers=running,
                          find_unused_parameters=idle_r_embedding(model, objective))
    if compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    return train_model


def idle_r_embedding(model: nn.Module, objective: Objective | None) -> bool:
    """Whether ``model`` has an embedding of the second time r (:class:`fmkit.flow.two_times.IntervalEmbedding`,
    e.g. ``two_times: true``) that ``objective`` never feeds (plain flow matching calls the model without
    r): its parameters then get no gradient, and DDP must be told (``find_unused_parameters``) or it
    fails at the second step. Flow-matching pre-training of a model later trained by MeanFlow is such a run.
    A guidance embedding (:class:`fmkit.flow.guidance_input.GuidanceEmbedding`) is idle likewise unless the
    objective gives the model its guidance scale (``objective.guidance_input``).
    """
    feeds_r, feeds_w = getattr(objective, "two_times", False), getattr(objective, "guidance_input", False)
    return any((isinstance(m, GuidanceEmbedding) and not feeds_w)
               or (isinstance(m, IntervalEmbedding) and not isinstance(m, GuidanceEmbedding) and not feeds_r)
               for m in model.modules())


def check_writable(run_dir: Path) -> None:
    """Every folder a fit writes into, probed before the first step: a read-only ``checkpoints/`` found
    at the first save would cost everything trained until then (a folder not made yet is as writable
    as the run directory it will be made in)."""
    folders = [run_dir] + [f for f in (run_dir / "checkpoints", run_dir / "samples") if f.is_dir()]
    for folder in folders:
        what = "the run directory" if folder == run_dir else f"the run's {folder.name}/ folder"
        try:
            folder.mkdir(parents=True, exist_ok=True)  # the run directory itself
            probe = folder / f".write-test-{os.getpid()}"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise OutputError(f"cannot write to {what} {folder}: {exc.strerror or exc}", where=str(folder),
                              fix="pass --out with a directory you can write to" if folder == run_dir
                              else "make it writable (chmod -R u+w RUN) before training: nothing could be "
                                   "saved") from None


def time_sampler(opts: TrainerOptions, n: int, device: torch.device) -> torch.Tensor:
    """``n`` training times from ``trainer.time_sampler`` and its parameters."""
    return sample_time(n, opts.time_sampler, mean=opts.time_mean, std=opts.time_std, alpha=opts.time_alpha,
                       beta=opts.time_beta, device=device, grid=opts.time_grid)


def objective_options(value: ObjectiveOptions | Mapping[str, Any] | None) -> ObjectiveOptions:
    """The Trainer's ``objective``: an objective's options model, a mapping ``{name: ..., ...}``
    (validated: an unknown name is refused with the known ones), or None for ``{name: cfm}``."""
    from pydantic import TypeAdapter

    if value is None:
        return CFMObjectiveOptions()
    return TypeAdapter(ObjectiveOptions).validate_python(dict(value) if isinstance(value, Mapping) else value)


def build_objective(spec: ObjectiveOptions | Mapping[str, Any] | None, opts: TrainerOptions, path: StatePath,
                    source: StateSource, coupling: Coupling, null_class: int | None) -> Objective:
    """The loss a trainer minimises, built once from the ``objective:`` section and the trainer's parts.

    Args:
        spec: the ``objective:`` section (which objective, with its own options; a mapping is validated,
            None is ``{name: cfm}``).
        opts: the ``trainer:`` options an objective takes: the time sampler, ``cond_dropout``, ``loss_weights``.
        path, source, coupling: the flow's parts, as the trainer samples with them.
        null_class: the label of a dropped condition (``DataInfo.null_class``: K for labels 0..K-1; None
            without condition classes).

    Returns:
        The objective, called per micro-step as ``objective(model, x1, x0)``.
    """
    spec = objective_options(spec)
    time = functools.partial(time_sampler, opts)
    if isinstance(spec, CFMObjectiveOptions):  # one branch per options model of engine.options.OBJECTIVES
        return CFMObjective(path, source, coupling, time=time, cond_dropout=opts.cond_dropout,
                            null_class=null_class or 0, weights=opts.loss_weights,
                            self_condition=spec.self_condition)
    if isinstance(spec, MeanFlowObjectiveOptions):
        return MeanFlowObjective(path, source, coupling, time=time, equal_fraction=spec.equal_fraction,
                                 adaptive_p=spec.adaptive_p, adaptive_c=spec.adaptive_c,
                                 guidance_scale=spec.guidance_scale, guidance_mix=spec.guidance_mix,
                                 cond_dropout=opts.cond_dropout, null_class=null_class or 0,
                                 weights=opts.loss_weights, guidance_range=spec.guidance_range)
    raise TypeError(f"no objective is built from {type(spec).__name__}")


def check_options(opts: TrainerOptions, info: DataInfo) -> None:
    """Trainer options that contradict the data, refused before any work (the batch sizes:
    :class:`~fmkit.engine.options.BatchSizes`; the evaluation's options: its
    :class:`~fmkit.engine.evaluation.Evaluator`)."""
    unknown = sorted(set(opts.loss_weights) - set(info.fields))
    if unknown:  # a misspelt field would otherwise train with every weight at 1, silently
        raise TrainingError(f"trainer.loss_weights names {unknown}, which the data does not have",
                            where="trainer.loss_weights",
                            fix=f"weigh the data's fields: {sorted(info.fields)}")
    if info.null_class is None and opts.cond_dropout > 0:
        raise TrainingError("trainer.cond_dropout needs a null class for dropped conditions, and the dataset "
                            "declares no number of condition classes (its info.num_cond_classes is None)",
                            where="trainer.cond_dropout", fix=f"{NULL_CLASS_FIX}; otherwise drop cond_dropout")


def training_device(opts: TrainerOptions, dist: DistInfo) -> torch.device:
    """The device a trainer runs on: ``trainer.device`` (this rank's GPU under DDP); on a CPU also its threads."""
    device = pick_device(opts.device)
    if device.type == "cpu":
        set_cpu_threads(opts, workers=opts.num_workers)
    if dist.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    return device


def check_fresh_start(run_dir: Path) -> None:
    """Refuse step 0 in a run directory that holds checkpoints: it would replace them and its metrics.csv."""
    if has_checkpoint(run_dir):
        raise TrainingError(
            "the run directory already holds checkpoints; training from step 0 would replace them and its "
            "metrics.csv", where=str(run_dir),
            fix="continue that run with fit(resume=True) (`fmkit train --resume`), or use another run_dir")
