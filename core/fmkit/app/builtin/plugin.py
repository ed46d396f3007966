"""The core's built-in plugin: paths, couplings, sources, solvers and the 2-D toy modality.

It registers through the same hooks as any third-party plugin, so the whole engine runs with no
plugin installed.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fmkit.app.hookspecs import hookimpl


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


@hookimpl
def register_paths(register):
    from fmkit.flow.paths import (AffinePath, CondOTScheduler, CosineScheduler, DiscretePath, PolynomialScheduler,
                             VPScheduler)

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
    from fmkit.flow.couplings import ExactOTCoupling, IndependentCoupling, SinkhornCoupling

    register("independent", IndependentCoupling, None, "pairs as sampled")
    register("exact_ot", ExactOTCoupling, None, "exact minibatch OT (assignment)")
    register("sinkhorn", SinkhornCoupling, SinkhornOptions, "entropic minibatch OT, plan sampled")


# -- sources ----------------------------------------------------------------------------------
class GaussianSourceOptions(_Options):
    std: float = Field(1.0, gt=0.0)


class CategoricalSourceOptions(_Options):
    kind: Literal["uniform", "mask"] = "uniform"


class EightGaussiansOptions(_Options):
    radius: float = Field(5.0, gt=0.0)
    std: float = Field(0.5, gt=0.0)


class GaussianToyOptions(_Options):
    mean: list[float] = Field(default_factory=lambda: [0.0, 0.0])
    cov: list[list[float]] | None = None


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
    from fmkit.flow.sources import GaussianSource
    from fmkit.app.builtin.toy import ToySource

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


# -- models -----------------------------------------------------------------------------------
@hookimpl
def register_models(register):
    from fmkit.app.builtin.mlp import MLP, MLPOptions

    register("mlp", MLP.from_data, MLPOptions, "MLP with sinusoidal time embedding for flat fields")


# -- solvers ----------------------------------------------------------------------------------
class FixedStepOptions(_Options):
    steps: int = Field(100, ge=1, description="number of steps on a uniform grid")


class AdaptiveOptions(_Options):
    rtol: float = Field(1e-5, gt=0.0)
    atol: float = Field(1e-5, gt=0.0)


@hookimpl
def register_solvers(register):
    from fmkit.flow.solvers import AdaptiveSolver, FixedStepSolver

    for m in ("euler", "midpoint", "heun", "rk4"):
        register(m, lambda steps, _m=m: FixedStepSolver(_m, steps), FixedStepOptions, f"fixed-step {m}")
    for m in AdaptiveSolver.METHODS:
        register(m, lambda rtol, atol, _m=m: AdaptiveSolver(_m, rtol, atol), AdaptiveOptions,
                 f"adaptive {m} (torchdiffeq)")


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
