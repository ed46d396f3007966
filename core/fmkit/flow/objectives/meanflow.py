"""MeanFlow: the average velocity u(z, r, t) learnt from scratch, for one-step generation.

Geng et al. 2025, "Mean Flows for One-step Generative Modeling". In fmkit's times (t = 0 the source,
t = 1 the data; a jump goes from t to r >= t):

- u(z_t, r, t) = 1 / (r - t) integral_t^r v(z_s, s) ds                          (eq. 3)
- the MeanFlow identity u = v - (t - r) d/dt u, with d/dt u = v du/dz + du/dt    (eqs. 6, 8)
- target u_tgt = v - (t - r) (v d_z u_theta + d_t u_theta), stop-gradient; its derivative is one
  forward-mode JVP of u_theta with tangents (v, 0, 1) on (z, r, t)               (eqs. 9-10)
- loss ||u_theta - sg(u_tgt)||^2, weighted by w = sg(1 / (||Delta||^2 + c)^p)     (eq. 11; sec. 4.3)
- guidance folded into the target: v~ = omega v + kappa u_theta(z_t, t, t | c) + (1 - omega - kappa)
  u_theta(z_t, t, t | null), v~ = v where the condition was dropped                (eqs. 19, 21)
- or guidance as an input (improved MeanFlow, Geng et al. 2025b): omega drawn per example from
  a range, the model told it, u_theta(z, r, t | c, omega), so the scale is chosen at sampling

The JVP runs inside the module the engine wraps for DDP (:class:`AverageVelocityJVP`, from
:meth:`MeanFlowObjective.training_module`), so DDP's forward sees it as the one forward of the step:
``torch.func.jvp`` around a DDP module, or on its inner module outside DDP's forward, would leave the
gradients unsynchronised without an error.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from fmkit.errors import FmkitError, ModelError, TrainingError
from fmkit.flow.couplings import Coupling, IndependentCoupling, draw_and_pair
from fmkit.flow.guidance import drop_condition
from fmkit.flow.guidance_input import require_guidance
from fmkit.flow.objectives.base import ModelFn, TimeSampler, uniform_time
from fmkit.flow.paths import AffinePath, PathSample, ProbPath, StatePath, expand_t
from fmkit.flow.self_conditioning import self_conditioned
from fmkit.flow.sources import GaussianSource, Source, StateSource
from fmkit.flow.state import COND, State, field_mask, fields, index, is_categorical
from fmkit.flow.two_times import require_r


class AverageVelocityJVP(nn.Module):
    """The model as MeanFlow trains it: ``forward(x_t, t, cond, r=None, tangent=None)``.

    Without ``tangent``: the model's own output (``r`` passed when given). With ``tangent`` (a state of
    the continuous fields, the velocity along which z moves): ``(u, dudt)``, where u = u_theta(z, r, t)
    keeps its graph to the weights and dudt = v d_z u + d_t u (one ``torch.func.jvp`` with tangents
    (v, 0, 1) on (z, r, t); MeanFlow eq. 8) is detached: it only enters the stop-gradient target.
    Only the examples with r != t go through the JVP (at r = t the target is v, and dudt is 0); the
    others take a plain forward, with no tangent to carry (a compiled graph keeps one JVP of the
    whole batch, for static shapes). The model is this module's only child, so DDP, EMA-free wrapping and
    ``torch.compile`` see the same parameters as the bare model.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x_t: State, t: Tensor, cond: Tensor | None = None, r: Tensor | None = None,
                tangent: Mapping[str, Tensor] | None = None,
                guidance: Tensor | None = None) -> State | tuple[State, State]:
        """The model's output, or with ``tangent`` the output and its total time derivative (see the class doc).

        Args:
            x_t: the state z_t [B, ...] (with any mask).
            t: the times [B].
            cond: the condition per example [B, ...] (e.g. class labels [B]), or None.
            r: the other times [B] (r >= t); needed with ``tangent``; None: the one-time model.
            tangent: dz/dt (the path's velocity v) per continuous field [B, ...]; None: no JVP.
            guidance: the guidance scale omega per example [B] for a model that takes it
                (:mod:`fmkit.flow.guidance_input`), held constant by the JVP; None: not passed.

        Returns:
            Without ``tangent``: the model's output state. With it: ``(u, dudt)``, u keeping its graph to
            the weights, dudt = v d_z u + d_t u per tangent field, detached.
        """
        kw = _told(guidance)
        if tangent is None:
            return self.model(x_t, t, cond, **kw) if r is None else self.model(x_t, t, cond, r=r, **kw)
        if r is None:
            raise ValueError("a JVP of the average velocity needs the second time r")
        jump = r != t
        if torch.compiler.is_compiling() or bool(jump.all()):  # static shapes for a compiled graph
            return self._jvp(x_t, t, cond, r, tangent, guidance)
        return self._split(x_t, t, cond, r, tangent, jump, guidance)

    def _split(self, x_t: State, t: Tensor, cond: Tensor | None, r: Tensor, tangent: Mapping[str, Tensor],
               jump: Tensor, guidance: Tensor | None = None) -> tuple[State, State]:
        """Only the examples with r != t need the JVP: at r = t the target is v itself ((t - r) d/dt u = 0).
        Those go through one JVP, the rest through a plain forward (the model is per example: no batch
        statistics), and both are put back in batch order; dudt is 0 where r = t."""
        moving, still = jump.nonzero().squeeze(1), (~jump).nonzero().squeeze(1)
        kw = _told(None if guidance is None else guidance[still])
        plain = self.model(index(x_t, still), t[still], None if cond is None else cond[still], r=r[still], **kw)
        if moving.numel() == 0:
            return {k: plain[k] for k in tangent}, {k: torch.zeros_like(plain[k]).detach() for k in tangent}
        u_m, d_m = self._jvp(index(x_t, moving), t[moving], None if cond is None else cond[moving], r[moving],
                             {k: v[moving] for k, v in tangent.items()},
                             None if guidance is None else guidance[moving])
        u, dudt = {}, {}
        for k in tangent:
            shape = (t.shape[0], *plain[k].shape[1:])
            u[k] = plain[k].new_zeros(shape).index_copy(0, still, plain[k]).index_copy(0, moving,
                                                                                      u_m[k].to(plain[k].dtype))
            dudt[k] = d_m[k].new_zeros(shape).index_copy(0, moving, d_m[k])
        return u, dudt

    def _jvp(self, x_t: State, t: Tensor, cond: Tensor | None, r: Tensor,
             tangent: Mapping[str, Tensor], guidance: Tensor | None = None) -> tuple[State, State]:
        """``(u, dudt)`` of every example by one ``torch.func.jvp`` (the class doc); ``guidance`` is held still."""
        z = {k: x_t[k] for k in tangent}
        rest = {k: v for k, v in x_t.items() if k not in z}  # masks, fields held still
        kw = _told(guidance)

        def u(z: dict[str, Tensor], r: Tensor, t: Tensor) -> dict[str, Tensor]:
            out = self.model({**z, **rest}, t, cond, r=r, **kw)
            return {k: out[k] for k in z}

        dz = {k: tangent[k].to(z[k].dtype) for k in z}
        # attention's fused kernels (flash, on the CPU too) have no forward-mode derivative; the math one has
        with sdpa_kernel(SDPBackend.MATH):
            out, dudt = torch.func.jvp(u, (z, r, t), (dz, torch.zeros_like(r), torch.ones_like(t)))
        return out, {k: d.detach() for k, d in dudt.items()}


class MeanFlowObjective:
    """MeanFlow's loss of a batch (see the module doc for the equations).

    Built once per training; ``objective(model, x1, x0=None) -> (total, per_field)`` per micro-step
    (the :class:`~fmkit.flow.objectives.Objective` protocol), ``model`` being
    :meth:`training_module`'s wrapper (the engine wraps once, before DDP and ``torch.compile``; a bare
    ``nn.Module`` is wrapped here on each call, which is right on one process). ``per_field``: each
    field's batch mean of the (unweighted) squared error to the target.

    Args:
        path: affine path(s) predicting the velocity; every data field continuous.
        source, coupling: p_0 (default N(0, I)) and how x0 and x1 are paired (default independent).
        time: ``time(B, device) -> [B]``; t and r are the smaller and the larger of two draws.
        equal_fraction: the fraction of examples with r = t (the flow-matching part; the paper's 75%).
        adaptive_p, adaptive_c: the adaptive weight 1 / (e + c)^p of the per-example mean squared error
            e (p = 0: the plain mean; the paper's p = 1, c = 1e-3).
        guidance_scale, guidance_mix: omega and kappa of the folded guidance (1 and 0: none); a scale
            other than 1 needs ``cond_dropout`` > 0 and conditional data.
        guidance_range: ``(low, high)``: omega drawn per example, uniform on the range, and given to the model
            (``guidance=``; a model with ``guidance_input``), so sampling picks the scale; instead of
            ``guidance_scale``. None: a fixed scale.
        cond_dropout, null_class: classifier-free training, as :class:`CFMObjective`.
        weights: per-field loss weights (1 for fields not named).
    """

    #: the engine keeps the model's memory layout standard: torch's forward-mode derivative of GroupNorm
    #: fails on channels-last tensors ("view size is not compatible"), so the JVP cannot run there
    channels_last = False
    #: it calls the model with the second time r: a model's r-embedding is trained (the engine's DDP
    #: wrap needs no search for parameters a step leaves unused, :func:`fmkit.engine.setup.wrap_for_training`)
    two_times = True

    def __init__(self, path: ProbPath | StatePath, source: Source | StateSource | None = None,
                 coupling: Coupling | None = None, *, time: TimeSampler | None = None, equal_fraction: float = 0.75,
                 adaptive_p: float = 1.0, adaptive_c: float = 1e-3, guidance_scale: float = 1.0,
                 guidance_mix: float = 0.0, cond_dropout: float = 0.0, null_class: int = 0,
                 weights: Mapping[str, float] | None = None,
                 guidance_range: tuple[float, float] | None = None) -> None:
        self.path = path if isinstance(path, StatePath) else StatePath(path)
        check_velocity_paths(self.path)
        source = source or GaussianSource()
        self.source = source if isinstance(source, StateSource) else StateSource(source)
        self.coupling = coupling or IndependentCoupling()
        self.time = time or uniform_time
        if not 0.0 <= equal_fraction <= 1.0:
            raise ValueError(f"equal_fraction must lie in [0, 1], got {equal_fraction}")
        self.equal_fraction, self.adaptive_p, self.adaptive_c = float(equal_fraction), float(adaptive_p), \
            float(adaptive_c)
        self.omega, self.kappa = float(guidance_scale), float(guidance_mix)
        self.guidance_range = None if guidance_range is None else (float(guidance_range[0]),
                                                                   float(guidance_range[1]))
        if self.guidance_range is not None:
            lo, hi = self.guidance_range
            if not 0.0 < lo <= hi:
                raise ValueError(f"guidance_range must be (low, high) with 0 < low <= high, got {guidance_range}")
            if self.omega != 1.0:
                raise TrainingError(f"objective.guidance_scale {self.omega:g} fixes omega, and guidance_range "
                                    f"{list(self.guidance_range)} draws it", where="objective.guidance_range",
                                    fix="keep one: guidance_range (the model takes omega; sampling picks it) or "
                                        "guidance_scale (folded in)")
        self.guided = self.omega != 1.0 or self.kappa != 0.0 or self.guidance_range is not None
        #: it calls the model with ``guidance=`` (a model's guidance embedding is trained; see ``two_times``)
        self.guidance_input = self.guidance_range is not None
        self.cond_dropout, self.null_class = float(cond_dropout), int(null_class)
        if self.guided and self.cond_dropout <= 0.0:
            raise TrainingError(
                f"objective.guidance_scale {self.omega:g} (guidance_mix {self.kappa:g}) mixes in the unconditional "
                "average velocity u(z, t, t | null), which the model learns only from dropped conditions, and "
                "trainer.cond_dropout is 0", where="trainer.cond_dropout",
                fix="set trainer.cond_dropout (the paper drops 10%: 0.1), or guidance_scale: 1 for no guidance")
        if self.guidance_range is not None and self.kappa != 0.0:
            raise TrainingError("objective.guidance_mix with guidance_range is not supported: the mix's "
                                "conditional branch would need its own omega", where="objective.guidance_mix",
                                fix="drop guidance_mix (0) with guidance_range")
        self.weights = {k: float(w) for k, w in (weights or {}).items() if w != 1.0}

    def training_module(self, model: nn.Module) -> nn.Module:
        """``model`` wrapped to compute the JVP inside its forward (:class:`AverageVelocityJVP`): the module
        the engine puts under DDP / ``torch.compile``. Refuses a model without the keyword ``r``."""
        require_r(model, "objective meanflow")
        if self.guidance_range is not None:
            require_guidance(model, "objective.guidance_range")
        if self_conditioned(model):
            raise ModelError(f"objective meanflow trains the average velocity without self-conditioning, and "
                             f"{type(model).__name__} is self-conditioned", where="model",
                             fix="build the model without self-conditioning for MeanFlow")
        return model if isinstance(model, AverageVelocityJVP) else AverageVelocityJVP(model)

    def times(self, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(t, r)``, each [n]: the smaller and the larger of two draws of ``time``, then r = t for a
        random ``equal_fraction`` of the examples (MeanFlow sec. 4.3, in fmkit's direction of time)."""
        a, b = self.time(n, device), self.time(n, device)
        t, r = torch.minimum(a, b), torch.maximum(a, b)
        if self.equal_fraction >= 1.0:
            return t, t.clone()
        if self.equal_fraction > 0.0:
            r = torch.where(torch.rand(n, device=device) < self.equal_fraction, t, r)
        return t, r

    def guidance_scales(self, n: int, device: torch.device) -> Tensor | None:
        """omega per example [n], uniform on ``guidance_range``; None with a fixed scale."""
        if self.guidance_range is None:
            return None
        lo, hi = self.guidance_range
        return lo + (hi - lo) * torch.rand(n, device=device)

    def __call__(self, model: ModelFn, x1: State, x0: State | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted total (a scalar) and each field's batch-mean squared error, for data ``x1``."""
        check_continuous(x1)
        if isinstance(model, nn.Module) and not _wrapped(model):
            model = self.training_module(model)
        if x0 is None:
            x0, x1 = draw_and_pair(self.source, self.coupling, x1)     # x0 ~ p_0, (x0, x1) ~ pi
        first = next(iter(fields(x1).values()))
        t, r = self.times(first.shape[0], first.device)
        ps = self.path.sample(x0, x1, t)                                # z_t and v = dz_t/dt on the path
        cond = x1.get(COND)
        cond_in = drop_condition(cond, self.cond_dropout, self.null_class)
        x_t = {k: v for k, v in ps.x_t.items() if k != COND}
        omega = self.guidance_scales(t.shape[0], t.device)
        v = self.guided_velocity(model, x_t, t, cond, cond_in, ps.dx_t, omega)
        u, u_tgt = self.prediction_and_target(model, x_t, t, r, cond_in, v, self.model_guidance(omega, cond_in))
        per_example: Tensor | None = None
        per_field: dict[str, Tensor] = {}
        for k, v1 in fields(x1).items():                               # masked mean of (u - sg(u_tgt))^2
            err = self.path.for_field(k, v1).loss(u[k], PathSample(t, x_t[k], u_tgt[k]), v1, field_mask(x1, k))
            per_field[k] = err.mean()
            err = self.weights[k] * err if k in self.weights else err
            per_example = err if per_example is None else per_example + err
        assert per_example is not None
        if self.adaptive_p != 0.0:                                     # w = sg(1 / (e + c)^p)
            per_example = per_example / (per_example.detach() + self.adaptive_c) ** self.adaptive_p
        return per_example.mean(), per_field

    def model_guidance(self, omega: Tensor | None, cond_in: Tensor | None) -> Tensor | None:
        """The omega the model is told [B]: the drawn one, 1 where the condition was dropped (its target
        is the unguided v); None with a fixed scale."""
        if omega is None or cond_in is None:
            return omega
        return torch.where(self.kept(cond_in), omega, torch.ones_like(omega))

    def kept(self, cond_in: Tensor) -> Tensor:
        """[B] bool: the examples whose condition was kept (a dropped one is null in every entry)."""
        return ~(cond_in == self.null_class).reshape(cond_in.shape[0], -1).all(1)

    def prediction_and_target(self, model: ModelFn, x_t: State, t: Tensor, r: Tensor, cond: Tensor | None,
                              v: Mapping[str, Tensor],
                              guidance: Tensor | None = None) -> tuple[State, dict[str, Tensor]]:
        """``(u_theta(z_t, r, t), sg(u_tgt))`` with u_tgt = v - (t - r) d/dt u_theta (eq. 10), d/dt along ``v``.

        Args:
            model: the :class:`AverageVelocityJVP`-wrapped model (its forward takes ``tangent``).
            x_t: the state z_t on the path [B, ...].
            t: the times [B].
            r: the other times [B], r >= t.
            cond: the condition the model sees [B, ...] (dropped to null where classifier-free training
                dropped it), or None.
            v: the (guided) velocity per field [B, ...], the JVP's tangent.
            guidance: omega per example [B] for a model that takes it, or None.

        Returns:
            ``(u, target)``: the prediction with its graph, and the detached target, per field [B, ...].
        """
        kw = _told(guidance)
        u, dudt = model(x_t, t, cond, r=r, tangent=v, **kw)
        target = {k: (v[k] - expand_t(t - r, v[k]) * dudt[k].to(v[k].dtype)).detach() for k in v}
        return u, target

    def guided_velocity(self, model: ModelFn, x_t: State, t: Tensor, cond: Tensor | None, cond_in: Tensor | None,
                        v: Mapping[str, Tensor], omega: Tensor | None = None) -> dict[str, Tensor]:
        """v~ of eq. 21 (``v`` itself without guidance, and where the condition was dropped).

        Args:
            model: the model, called without gradient for u_theta(z_t, t, t | c) and (... | null).
            x_t: the state z_t on the path [B, ...].
            t: the times [B].
            cond: the batch's true condition [B, ...], or None (refused when guided).
            cond_in: the condition after dropout (null where dropped), or None.
            v: the path's velocity dz_t/dt per field [B, ...] (None entries are skipped).
            omega: the scale per example [B] (``guidance_range``); None: the fixed ``guidance_scale``.

        Returns:
            The velocity per field [B, ...] whose JVP and target the loss uses.
        """
        v = {k: d for k, d in v.items() if d is not None}
        if not self.guided:
            return v
        if cond is None:
            raise FmkitError(f"objective.guidance_scale {self.omega:g} needs conditional data (labels in `cond`)",
                             where="objective.guidance_scale", fix="use conditional data, or guidance_scale: 1")
        null = torch.full_like(cond, self.null_class)
        with torch.no_grad():  # u_theta(z_t, t, t | .) enters the target only: stop-gradient
            if self.kappa == 0.0:
                u_null, u_cond = model(x_t, t, null, r=t), None
            else:
                both = model({k: _twice(x) for k, x in x_t.items()}, torch.cat([t, t]), torch.cat([cond, null]),
                             r=torch.cat([t, t]))
                b = t.shape[0]
                u_cond, u_null = {k: o[:b] for k, o in both.items()}, {k: o[b:] for k, o in both.items()}
        # the examples whose condition was kept (a dropped one is null in every entry): they get the mix
        kept = self.kept(cond_in) if cond_in is not None else None
        out = {}
        for k, vk in v.items():
            w = self.omega if omega is None else omega.to(vk.dtype).reshape(-1, *([1] * (vk.dim() - 1)))
            mix = w * vk + (1.0 - w - self.kappa) * u_null[k].to(vk.dtype)
            if u_cond is not None:
                mix = mix + self.kappa * u_cond[k].to(vk.dtype)
            out[k] = mix if kept is None else torch.where(kept.reshape(-1, *([1] * (vk.dim() - 1))), mix, vk)
        return out


def check_velocity_paths(path: StatePath) -> None:
    """Refuse paths MeanFlow cannot train: every field's path must be an affine path predicting the
    velocity (an x1 prediction or a discrete path has no average velocity to regress)."""
    for name, p in [("path", path.default)] + [(f"path.fields.{k}", q) for k, q in path.per_field.items()]:
        if not isinstance(p, AffinePath):
            raise FmkitError(f"objective meanflow trains continuous fields along an affine path; {name} is a "
                             f"{type(p).__name__}", where=name,
                             fix="use a continuous path (condot, vp, cosine, polynomial), or objective: {name: cfm} "
                                 "for categorical fields")
        if p.prediction != "velocity":
            raise FmkitError(f"objective meanflow regresses the average velocity, and {name} predicts "
                             f"{p.prediction!r}", where=f"{name}.prediction",
                             fix=f"drop `prediction: {p.prediction}` from {name} (the default, velocity)")


def check_continuous(x1: State) -> None:
    """Refuse a batch with categorical fields: MeanFlow's JVP and jump are defined for continuous states."""
    categorical = [k for k, v in fields(x1).items() if is_categorical(v)]
    if categorical:
        raise ModelError(f"objective meanflow trains continuous fields only; field(s) {categorical} hold class "
                         "indices (categorical)", where="objective",
                         fix="use objective: {name: cfm} for data with categorical fields (a discrete path)")


def _wrapped(model: nn.Module) -> bool:
    """Whether ``model`` computes the JVP in its forward already: the wrapper, or DDP / a compiled
    module around it."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    return isinstance(inner, AverageVelocityJVP)


def _told(guidance: Tensor | None) -> dict[str, Tensor]:
    """The keyword that tells a model its guidance scale, or none (omega = 1)."""
    return {} if guidance is None else {"guidance": guidance}


def _twice(x: Tensor | Mapping[str, Tensor]) -> Tensor | dict[str, Tensor]:
    return {k: torch.cat([m, m]) for k, m in x.items()} if isinstance(x, Mapping) else torch.cat([x, x])
