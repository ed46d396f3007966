"""The core's built-in plugin: paths, couplings, sources, solvers and the 2-D toy modality.

It registers through the same hooks as any third-party plugin, so the whole engine runs with no
plugin installed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fmkit.app.hookspecs import hookimpl


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # `radius: .inf` is no option value


# -- paths ------------------------------------------------------------------------------------
class AffineOptions(_Options):
    prediction: Literal["velocity", "x1"] = Field(
        "velocity", description="what the model regresses: the velocity dx_t, or the data endpoint x1")


class CondOTOptions(AffineOptions):
    sigma_min: float = Field(0.0, ge=0.0, lt=1.0, description="noise std left at t=1")


class VPOptions(AffineOptions):
    beta_min: float = Field(0.1, gt=0.0)
    beta_max: float = Field(20.0, gt=0.0)


class PolynomialOptions(AffineOptions):
    exponent: float = Field(2.0, gt=0.0)


class DiscreteOptions(_Options):
    source: Literal["mask", "uniform"] = "mask"
    exponent: float = Field(1.0, gt=0.0, description="kappa_t = t^exponent")
    stochasticity: float = Field(0.0, ge=0.0, description="sampling only, mask source: rate at which "
                                 "unmasked tokens are masked again (Campbell et al. 2024)")
    temperature: float = Field(1.0, gt=0.0, description="sampling only: jumps draw from p(x1|x_t)^(1/T)")

    @model_validator(mode="after")
    def _noise_needs_mask(self) -> DiscreteOptions:
        if self.stochasticity > 0 and self.source != "mask":
            raise ValueError("stochasticity > 0 re-masks tokens and needs source: mask "
                             f"(got source: {self.source}); set stochasticity: 0 or source: mask")
        return self


@hookimpl
def register_paths(register):
    from fmkit.flow.paths import (
        AffinePath,
        CondOTScheduler,
        CosineScheduler,
        DiscretePath,
        PolynomialScheduler,
        VPScheduler,
    )

    register("condot", lambda prediction, sigma_min: AffinePath(CondOTScheduler(sigma_min), prediction),
             CondOTOptions, "conditional OT / rectified flow: x_t = t x1 + (1 - (1 - sigma_min) t) x0")
    register("vp", lambda prediction, beta_min, beta_max: AffinePath(VPScheduler(beta_min, beta_max), prediction),
             VPOptions, "variance-preserving diffusion path (Lipman et al. 2022)")
    register("cosine", lambda prediction: AffinePath(CosineScheduler(), prediction), AffineOptions,
             "x_t = sin(pi t/2) x1 + cos(pi t/2) x0")
    register("polynomial", lambda prediction, exponent: AffinePath(PolynomialScheduler(exponent), prediction),
             PolynomialOptions, "x_t = t^n x1 + (1 - t^n) x0")
    register("discrete", DiscretePath, DiscreteOptions, "mixture path for categorical fields (Gat et al. 2024)")


# -- couplings --------------------------------------------------------------------------------
class SinkhornOptions(_Options):
    epsilon: float = Field(0.05, gt=0.0, description="entropic regularisation, relative to the mean cost")
    iters: int = Field(200, ge=1)


@hookimpl
def register_couplings(register):
    from fmkit.flow.couplings import ExactOTCoupling, GivenCoupling, IndependentCoupling, SinkhornCoupling

    register("independent", IndependentCoupling, None, "pairs as sampled")
    register("exact_ot", ExactOTCoupling, None, "exact minibatch OT (assignment)")
    register("sinkhorn", SinkhornCoupling, SinkhornOptions, "entropic minibatch OT, plan sampled")
    register("given", GivenCoupling, None, "stored pairs kept as they are (reflow, distillation; data: pairs)")


# -- sources ----------------------------------------------------------------------------------
class GaussianSourceOptions(_Options):
    std: float = Field(1.0, gt=0.0)


class CategoricalSourceOptions(_Options):
    kind: Literal["uniform", "mask"] = "uniform"


class EightGaussiansOptions(_Options):
    radius: float = Field(5.0, gt=0.0)
    std: float = Field(0.5, gt=0.0)


class GaussianToyOptions(_Options):
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0], min_length=1, description="the mean (its length "
                              "is the dimension)")
    cov: list[list[float]] | None = Field(None, description="covariance, d x d symmetric positive definite "
                                          "(null: the identity)")

    @model_validator(mode="after")
    def _covariance_fits_the_mean(self) -> GaussianToyOptions:
        if self.cov is None:
            return self
        import numpy as np

        d = len(self.mean)
        c = np.asarray(self.cov, dtype=np.float64) if all(len(r) == d for r in self.cov) else None
        if c is None or c.shape != (d, d):
            raise ValueError(f"cov must be {d} x {d} to match the mean of length {d}, got "
                             f"{len(self.cov)} rows of lengths {[len(r) for r in self.cov]}")
        if not np.allclose(c, c.T):
            raise ValueError("cov must be symmetric")
        if np.linalg.eigvalsh(c).min() <= 0:
            raise ValueError(f"cov must be positive definite; its smallest eigenvalue is "
                             f"{np.linalg.eigvalsh(c).min():.3g}")
        return self


class MoonsOptions(_Options):
    noise: float = Field(0.05, ge=0.0)


class CirclesOptions(_Options):
    noise: float = Field(0.05, ge=0.0)
    factor: float = Field(0.5, gt=0.0, lt=1.0)
    scale: float = Field(3.0, gt=0.0)


class CheckerboardOptions(_Options):
    size: float = Field(4.0, gt=0.0)


_TOY_OPTIONS: dict[str, type[_Options]] = {
    "moons": MoonsOptions, "eight_gaussians": EightGaussiansOptions, "checkerboard": CheckerboardOptions,
    "circles": CirclesOptions, "gaussian": GaussianToyOptions,
}


def _categorical_source(kind: str, field_info=None):
    from fmkit.flow.sources import CategoricalSource

    if field_info is None or field_info.num_classes is None:
        raise ValueError("the categorical source needs a categorical field (one with num_classes)")
    return CategoricalSource(field_info.num_classes, kind)


@hookimpl
def register_sources(register):
    from fmkit.app.builtin.toy import ToySource
    from fmkit.flow.sources import GaussianSource

    register("gaussian", GaussianSource, GaussianSourceOptions, "isotropic Gaussian N(0, std^2 I)")
    register("categorical", _categorical_source, CategoricalSourceOptions, "uniform or mask-token class indices")
    for kind, opts in _TOY_OPTIONS.items():
        if kind != "gaussian":  # the isotropic "gaussian" source above covers it
            register(kind, lambda _k=kind, **p: ToySource(_k, **p), opts, f"the 2-D toy distribution {kind!r}")


# -- datasets ---------------------------------------------------------------------------------
def _toy_dataset_options(base: type[_Options]) -> type[_Options]:
    class Opts(base):  # type: ignore[misc, valid-type]
        n: int = Field(100_000, ge=1, description="number of points generated")
        seed: int = Field(0, description="seed of the generated points")
        conditional: bool = Field(False, description="yield class labels as cond")

    Opts.__name__ = base.__name__.replace("Options", "DatasetOptions")
    return Opts


@hookimpl
def register_datasets(register):
    from fmkit.app.builtin.toy import ToyDataset

    for kind, opts in _TOY_OPTIONS.items():
        register(kind, lambda _k=kind, **p: ToyDataset(_k, **p), _toy_dataset_options(opts),
                 f"2-D toy points: {kind}")
    register("pairs", _pairs_dataset, PairsOptions,
             "stored (x0, x1) pairs written by `fmkit reflow` (coupling: given)")


class PairsOptions(_Options):
    path: str = Field(description="the pairs folder (`fmkit reflow RUN --out PAIRS`)")
    limit: int | None = Field(None, ge=1, description="use only the first N pairs")
    verify: bool = Field(True, description="check each shard's sha256 when loading")
    reference: Literal["pairs", "teacher"] = Field(
        "pairs", description="what metrics compare samples with: the pairs' x1 (the teacher's samples), or the "
        "teacher's own data, rebuilt from the data options its checkpoint recorded")


def _pairs_dataset(path: str, limit: int | None, verify: bool, reference: str, registry):
    """The pairs; with ``reference: teacher`` the teacher's data, built by the ``registry`` building this."""
    from fmkit.app.builtin.pairs import PairsDataset
    from fmkit.errors import DataError

    ds = PairsDataset(path, limit=limit, verify=verify)
    if reference == "teacher":
        spec = (ds.manifest.get("teacher") or {}).get("fingerprint", {}).get("data")
        if not spec:
            raise DataError(f"the pairs in {path} record no teacher data options", where="data.reference",
                            fix="use data.reference: pairs (pairs saved by save_pairs or write_pairs name no recipe)")
        ds.reference_data = registry.build("datasets", spec, where="data.reference (the teacher's data)")
    return ds


# -- models -----------------------------------------------------------------------------------
@hookimpl
def register_models(register):
    from fmkit.app.builtin.mlp import MLP, MLPOptions

    register("mlp", MLP.from_data, MLPOptions, "MLP with sinusoidal time embedding for flat fields")


# -- solvers ----------------------------------------------------------------------------------
class FixedStepOptions(_Options):
    steps: int = Field(100, ge=1, description="number of steps on a uniform grid")
    sway: float | None = Field(None, ge=-1.0, le=1.0, description="a sway-sampling time grid (F5-TTS) of this "
                               "coefficient instead of the uniform one: < 0 puts the steps near t=0 (few-step "
                               "sampling); null = uniform")


class MeanFlowSolverOptions(_Options):
    steps: int = Field(1, ge=1, description="jumps x_r = x_t + (r - t) u(x_t, r, t) on a uniform grid (NFE = steps)")


class AdaptiveOptions(_Options):
    rtol: float = Field(1e-5, gt=0.0)
    atol: float = Field(1e-5, gt=0.0)


@hookimpl
def register_solvers(register):
    from fmkit.flow.solvers import AdaptiveSolver, FixedStepSolver, MeanFlowSolver, sway_grid

    for m in ("euler", "midpoint", "heun", "rk4"):
        register(m, lambda steps, sway=None, _m=m: FixedStepSolver(_m, steps, None if sway is None else
                                                                   sway_grid(steps, sway)),
                 FixedStepOptions, f"fixed-step {m}")
    for m in AdaptiveSolver.METHODS:
        register(m, lambda rtol, atol, _m=m: AdaptiveSolver(_m, rtol, atol), AdaptiveOptions,
                 f"adaptive {m} (torchdiffeq)")
    register("meanflow", MeanFlowSolver, MeanFlowSolverOptions,
             "jumps with the average velocity of a model trained by objective meanflow (1, 2, 4 steps)")


# -- metrics and writers ----------------------------------------------------------------------
class W2Options(_Options):
    field: str = "x"
    num_reference: int = Field(2000, ge=2)


class ScatterOptions(_Options):
    field: str = "x"
    num_reference: int = Field(2000, ge=1)
    max_points: int = Field(5000, ge=1)


@hookimpl
def register_metrics(register):
    from fmkit.app.builtin.metrics import W2Metric

    register("w2", W2Metric, W2Options, "exact 2-Wasserstein distance between samples and data")


@hookimpl
def register_writers(register):
    from fmkit.app.builtin.writers import ScatterWriter

    register("scatter", ScatterWriter, ScatterOptions, "PNG scatter plot of 2-D samples over data")


@hookimpl
def register_callbacks(register):
    from fmkit.app.builtin.callbacks import WallClockLimit, WallClockOptions

    register("wall_clock_limit", WallClockLimit, WallClockOptions,
             "stop training (with checkpoint and final evaluation) after N minutes of wall-clock time")


@hookimpl
def register_loggers(register):
    from fmkit.app.builtin.loggers import MlflowOptions, TensorBoardOptions, WandbOptions
    from fmkit.engine.loggers import CsvLogger

    def tensorboard(subdir):
        from fmkit.engine.trackers.tensorboard import TensorBoardLogger

        return TensorBoardLogger(subdir)

    def wandb(**options):
        from fmkit.engine.trackers.wandb_logger import WandbLogger

        return WandbLogger(**options)

    def mlflow(**options):
        from fmkit.engine.trackers.mlflow_logger import MlflowLogger

        return MlflowLogger(**options)

    register("csv", CsvLogger, None, "RUN/metrics.csv (step,name,value): always on, listed or not")
    register("tensorboard", tensorboard, TensorBoardOptions, "TensorBoard event files in RUN/tensorboard")
    register("wandb", wandb, WandbOptions, "Weights & Biases run (pip install wandb; WANDB_MODE=offline works "
             "without an account)")
    register("mlflow", mlflow, MlflowOptions, "MLflow run (pip install mlflow-skinny) in a tracking store")
