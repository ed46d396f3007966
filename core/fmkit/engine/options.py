"""The engine's options: how the Trainer trains (:class:`TrainerOptions`), what loss it minimises
(:data:`ObjectiveOptions`) and how it evaluates (:class:`EvalOptions`), and the batch sizes they make
(:class:`BatchSizes`). A recipe's ``trainer:``, ``objective:`` and ``eval:`` sections are these models
(the recipe adds the metrics and writers to build); in Python they are passed to :class:`fmkit.Trainer`
directly."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictInt, Tag, model_validator

from fmkit.engine.progress import HEARTBEAT_S
from fmkit.errors import TrainingError

#: the most optimizer steps a recipe may ask for: checkpoint names hold 9 digits (sorted by number past
#: that, but a run of 10^9 steps is a typo, e.g. `steps: 1e26`)
MAX_STEPS = 10**9


class TrainerOptions(BaseModel):
    """Optimisation, precision, device, data loading, checkpointing and logging of one training run."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    steps: StrictInt = Field(1000, ge=1, le=MAX_STEPS, description="optimizer steps in total")
    batch_size: int = Field(256, ge=1, description="global batch size (all ranks, all accumulation steps)")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    betas: tuple[Annotated[float, Field(ge=0.0, lt=1.0)], Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        (0.9, 0.999), description="AdamW's moment decays, each in [0, 1)")
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="final lr / peak lr of the cosine schedule")
    grad_clip: float | None = Field(1.0, gt=0.0, description="max global grad norm; null disables")
    divergence: float | None = Field(1000.0, gt=1.0, description="stop when a (finite) loss exceeds this many times "
                                     "its lowest running level and the first loss: the model diverged; null: never")
    ema_decay: float | None = Field(0.999, ge=0.0, lt=1.0, description="EMA of weights; null disables")
    time_sampler: Literal["uniform", "logit_normal", "beta", "grid"] = "uniform"
    time_mean: float = 0.0
    time_std: float = Field(1.0, gt=0.0)
    time_alpha: float = Field(1.0, gt=0.0, description="beta time sampler: Beta(time_alpha, time_beta)")
    time_beta: float = Field(1.0, gt=0.0)
    time_grid: list[Annotated[float, Field(ge=0.0, le=1.0)]] | None = Field(
        None, min_length=1, description="grid time sampler: t drawn uniformly from these times (distillation: [0.0] "
        "for a one-step student)")
    init_from: str | None = Field(None, description="start from another run's weights (a run directory or one of "
                                  "its checkpoints): reflow from the teacher, fine-tuning; recorded as the lineage")
    init_from_ema: bool = Field(True, description="init_from takes the run's EMA weights (its model weights if false "
                                "or if it kept no EMA)")
    cond_dropout: float = Field(0.0, ge=0.0, le=1.0, description="classifier-free guidance training")
    loss_weights: dict[str, Annotated[float, Field(ge=0.0)]] = Field(
        default_factory=dict, description="per-field loss weights (>= 0; fields the data has)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 autocast on CUDA, fp32 elsewhere; bf16 = autocast on any device (on a CPU, slow: for checks)")
    compile: bool = False
    channels_last: bool | None = Field(None, description="the model's 4-D weights and the batches' 4-D (image) "
                                       "fields in channels-last memory order, for NHWC convolution kernels; null = "
                                       "on for a CUDA model with 2-D convolutions, off otherwise")
    num_workers: int = Field(0, ge=0)
    pairing: Literal["auto", "step", "loader"] = Field(
        "auto", description="where source noise is drawn and paired with the data: step = on the device inside "
        "the step; loader = on the CPU in the data pipeline (DataLoader workers, ahead of the step); auto = loader "
        "for couplings that declare host=True (CPU-bound, e.g. equivariant OT), else step")
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(50, ge=1)
    progress: bool = True
    heartbeat_s: float = Field(HEARTBEAT_S, ge=0.0, description="seconds between one-line progress reports (step, "
                               "loss, steps/s, ETA) when the progress bar is off or output is not a terminal; 0: none")
    cpu_threads: int | None = Field(None, ge=1, le=1024, description="torch intra-op threads on a CPU, for training, "
                                    "sampling and evaluation (null: FMKIT_CPU_THREADS, else the cores that DataLoader "
                                    "workers and other busy processes leave free when it starts, at least 1)")

    @model_validator(mode="after")
    def _grid_needs_times(self) -> TrainerOptions:
        if self.time_sampler == "grid" and not self.time_grid:
            raise ValueError("time_sampler grid needs time_grid, e.g. time_grid: [0.0] (one-step distillation)")
        return self


class EvalOptions(BaseModel):
    """How often and how many samples to draw for evaluation, and with which weights / guidance.

    ``chunk_size`` was called ``batch_size`` (which elsewhere means the training batch); the old key is
    still read, so recipes and run directories written before keep working."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    #: old key -> its new name; a recipe file may hold either, not both (``--set`` of the old name sets the new)
    RENAMED: ClassVar[dict[str, str]] = {"batch_size": "chunk_size"}
    every: int = Field(0, ge=0, description="evaluate every N steps; 0 = only at the end")
    num_samples: int = Field(1000, ge=1)
    chunk_size: int = Field(1000, ge=1, description="samples generated per solver call (formerly batch_size)")
    use_ema: bool = True
    guidance_scale: float | None = Field(None, description="classifier-free guidance scale (conditional data); 1 = "
                                         "the conditional model, at the cost of an unguided one")

    @model_validator(mode="before")
    @classmethod
    def _old_chunk_key(cls, data: Any) -> Any:
        """Old names (:attr:`RENAMED`: ``batch_size``) read as the new; both at once is ambiguous and refused."""
        if not isinstance(data, Mapping):
            return data
        for old, new in cls.RENAMED.items():
            if old in data and new in data:
                raise ValueError(f"eval.{old} is the old name of eval.{new} (samples per solver call): "
                                 f"set eval.{new} alone")
        return {cls.RENAMED.get(k, k): v for k, v in data.items()}


class CFMObjectiveOptions(BaseModel):
    """``objective: {name: cfm}``: conditional flow matching (:class:`fmkit.flow.objectives.CFMObjective`);
    its times, condition dropout and loss weights are ``trainer:`` options."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: Literal["cfm"] = "cfm"
    self_condition: float = Field(0.0, ge=0.0, le=1.0, description="probability that a batch is self-conditioned: "
                                  "the model also reads its own x1 estimate from a first pass without gradient "
                                  "(Chen et al. 2022; SemlaFlow's 0.5); needs a self-conditioned model")


class MeanFlowObjectiveOptions(BaseModel):
    """``objective: {name: meanflow, ...}``: the average velocity u(z, r, t) for one- and few-step sampling
    (:class:`fmkit.flow.objectives.MeanFlowObjective`, Geng et al. 2025). t and r are the smaller and
    larger of two draws of ``trainer.time_sampler`` (uniform or logit_normal, its mean and std);
    condition dropout and loss weights are ``trainer:`` options too."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    name: Literal["meanflow"] = "meanflow"
    equal_fraction: float = Field(0.75, ge=0.0, le=1.0, description="fraction of examples with r = t (plain "
                                  "flow matching); the paper's best is 0.75")
    adaptive_p: float = Field(1.0, ge=0.0, description="adaptive loss weight 1 / (e + c)^p of each example's mean "
                              "squared error e; 0 = plain mean squared error")
    adaptive_c: float = Field(1e-3, gt=0.0, description="c of the adaptive weight")
    guidance_scale: float = Field(1.0, gt=0.0, description="omega: classifier-free guidance folded into the "
                                  "target (needs trainer.cond_dropout > 0); 1 = none")
    guidance_mix: float = Field(0.0, ge=0.0, lt=1.0, description="kappa: the share of the conditional average "
                                "velocity in the guided target (effective scale omega / (1 - kappa))")
    guidance_range: tuple[float, float] | None = Field(
        None, description="[low, high]: omega drawn per example and given to the model (a model with "
        "guidance_input: true), so eval.guidance_scale / --guidance picks it at sampling, still in one jump "
        "(improved MeanFlow); instead of guidance_scale; needs trainer.cond_dropout > 0")

    @model_validator(mode="after")
    def _one_guidance(self) -> "MeanFlowObjectiveOptions":
        if self.guidance_range is not None:
            lo, hi = self.guidance_range
            if not 0.0 < lo <= hi:
                raise ValueError(f"guidance_range [{lo:g}, {hi:g}] must be [low, high] with 0 < low <= high")
            if self.guidance_scale != 1.0:
                raise ValueError("guidance_scale folds one omega into training and guidance_range draws it: keep one")
            if self.guidance_mix != 0.0:
                raise ValueError("guidance_mix is not supported with guidance_range: drop guidance_mix")
        return self


#: objective name -> its options model; the ``objective:`` section is one of them, told apart by ``name``
OBJECTIVES: dict[str, type[BaseModel]] = {"cfm": CFMObjectiveOptions, "meanflow": MeanFlowObjectiveOptions}


def _objective_name(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("name", "cfm")
    return getattr(value, "name", None) if isinstance(value, BaseModel) else None


#: the recipe's ``objective:`` section (default ``{name: cfm}``); an unknown name is refused with the known ones
ObjectiveOptions = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in OBJECTIVES.items())],  # type: ignore[misc]
    Discriminator(_objective_name, custom_error_type="unknown_objective",
                  custom_error_message=f"must be {{name: <objective>}} with one of the objectives: "
                                       f"{', '.join(OBJECTIVES)}"),
]


@dataclass(frozen=True)
class BatchSizes:
    """A fit's training batch, named by meaning (the evaluation's chunk is ``EvalOptions.chunk_size``).

    ``global_batch`` examples make one optimizer step (``trainer.batch_size``): ``grad_accum``
    micro-steps on each of ``processes`` ranks, each a ``micro_batch`` of this rank's own examples.
    """

    global_batch: int
    grad_accum: int = 1
    processes: int = 1

    def __post_init__(self) -> None:
        if self.global_batch % (self.grad_accum * self.processes):
            raise TrainingError(
                f"trainer.batch_size={self.global_batch} is not divisible by grad_accum x processes = "
                f"{self.grad_accum} x {self.processes}", where="trainer.batch_size",
                fix="pick a batch size that is a multiple of both")

    @property
    def micro_batch(self) -> int:
        """Examples per forward/backward on one rank: global_batch / (grad_accum x processes)."""
        return self.global_batch // (self.grad_accum * self.processes)

    @classmethod
    def of(cls, opts: TrainerOptions, processes: int = 1) -> BatchSizes:
        """The batch sizes of ``opts`` on ``processes`` ranks; refused (TrainingError) when they do not divide."""
        return cls(opts.batch_size, opts.grad_accum, processes)
