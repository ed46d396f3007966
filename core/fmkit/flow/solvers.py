"""ODE solvers that carry a state from t0 to t1 along a velocity field.

``velocity(x, t)`` maps a state (dict of fields, no mask/cond) and a scalar time tensor to a dict of
the same fields. Continuous (floating) fields move by explicit Runge-Kutta steps; categorical
(integer) fields are CTMC states whose "velocity" is a rate over classes [..., K]: each step jumps
by sampling from delta_x + h * rate (Gat et al. 2024, Euler step for discrete flows), holding the
categorical fields still inside a step's intermediate stages. A velocity that takes a ``step``
keyword gets the step size at each step's start, so it may return the rate averaged over the step
(what :func:`fmkit.flow.sampling.model_velocity` does for discrete paths). Adaptive methods go through
torchdiffeq (continuous fields only). Every solve counts function evaluations (NFE).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from fmkit.errors import ContractError, FmkitError
from fmkit.flow.paths import check_output, takes_step  # noqa: F401 - takes_step: solver authors use it from here
from fmkit.flow.state import State, StateLike, as_state, is_categorical, unwrap

Velocity = Callable[[State, Tensor], State]


@dataclass
class Solution:
    """Result of a solve: final state, number of velocity evaluations, optional trajectory."""

    x: State
    nfe: int
    times: Tensor | None = None
    trajectory: list[State] = field(default_factory=list)


class Solver(ABC):
    """Integrates ``velocity`` from ``t0`` to ``t1`` (t1 < t0 runs backwards).

    Callers use :meth:`solve`; a solver implements :meth:`integrate`, the one extension point (it
    receives a state and a velocity already checked for the state's fields and shapes). ``x0`` may be
    a bare tensor, in which case ``velocity(x, t)`` takes and returns tensors too and the solution's
    ``x``/``trajectory`` hold tensors.
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "_solve" in vars(cls) and "integrate" not in vars(cls):  # a solver written before the rename
            warnings.warn(f"solver {cls.__qualname__} implements _solve, which fmkit now calls integrate: rename "
                          "the method (and any super()._solve call) to integrate", DeprecationWarning, stacklevel=2)
            cls.integrate = vars(cls)["_solve"]  # type: ignore[method-assign]

    def solve(self, velocity: Callable, x0: StateLike, t0: float = 0.0, t1: float = 1.0, *,
              trajectory: bool = False) -> Solution:
        """Integrate ``velocity`` from ``x0`` at ``t0`` to ``t1``; with ``trajectory`` keep the states visited.

        Args:
            velocity: ``velocity(x, t) -> dx/dt``, x like ``x0`` and t a 0-d tensor (time units of the path,
                0 = source, 1 = data); it may take ``step=h`` (see :meth:`integrate`).
            x0: the starting state [B, ...] (a dict of fields), or a bare tensor [B, ...].
            t0: the start time.
            t1: the end time (t1 < t0 integrates backwards).
            trajectory: also keep the times and states visited.

        Returns:
            A :class:`Solution`: the state at ``t1`` (a tensor when ``x0`` was one), the number of velocity
            evaluations and, with ``trajectory``, the times and states.
        """
        state, bare = as_state(x0)
        if bare:
            fn = velocity

            def velocity(x: State, t: Tensor, **kw: object) -> State:  # noqa: F811 - adapt a tensor field
                return {"x": fn(x["x"], t, **kw)}

        sol = self.integrate(CheckedVelocity(velocity), state, float(t0), float(t1), trajectory=trajectory)
        if not isinstance(sol, Solution):
            raise ContractError(f"{type(self).__name__}.integrate returned a {type(sol).__name__}, not a Solution",
                                where=f"solver {type(self).__name__}",
                                fix="return fmkit.plugin.Solution(x=final_state, nfe=evaluations)")
        if bare:
            sol.x = unwrap(sol.x, True)  # type: ignore[assignment]
            sol.trajectory = [unwrap(s, True) for s in sol.trajectory]  # type: ignore[misc]
        return sol

    @abstractmethod
    def integrate(self, velocity: Velocity, x0: State, t0: float, t1: float, *, trajectory: bool) -> Solution:
        """Integrate ``velocity(x, t)`` (x a state of ``x0``'s fields; t a 0-d tensor of x0's float dtype)
        from ``t0`` to ``t1`` (t1 < t0 runs backwards: the likelihood integrates 1 -> 0). Return a
        :class:`Solution` with the final state, the number of velocity calls, and with ``trajectory``
        the times and states visited. Categorical fields (integer tensors) are CTMC states whose
        "velocity" is a rate [..., K]: jump them (:func:`ctmc_jump`) or refuse them. To jump over a
        step of size h, call ``velocity(x, t, step=h)`` when ``takes_step(velocity)``: the velocity
        then returns the rate averaged over the step (exact for discrete paths).

        Args:
            velocity: ``velocity(x, t[, step=h])``, checked already for ``x0``'s fields and shapes.
            x0: the starting state, a dict of fields [B, ...] (no mask or cond).
            t0: the start time.
            t1: the end time (below ``t0``: backwards).
            trajectory: also record the times and states visited.

        Returns:
            A :class:`Solution` with the state at ``t1`` and the number of velocity calls; with
            ``trajectory`` also ``times`` [n] and the ``n`` states at them.
        """


class CheckedVelocity:
    """A velocity whose first output's fields and shapes are checked against its input (a velocity of
    the wrong shape would broadcast into the state without an error): what every solver's ``integrate``
    and the likelihood's augmented ODE call."""

    def __init__(self, fn: Velocity) -> None:
        self.fn, self.checked = fn, False
        self.takes_step = takes_step(fn)  # its own **step would always say yes

    def __call__(self, x: State, t: Tensor, **step: float) -> State:
        out = self.fn(x, t, **step)
        if not self.checked:
            check_output(out, x, what="the velocity function")
            self.checked = True
        return out


class _Counter:
    """Counts evaluations (a solver's NFE)."""

    def __init__(self, fn: Velocity) -> None:
        self.fn, self.n = fn, 0

    def __call__(self, x: State, t: Tensor, **step: float) -> State:
        self.n += 1
        return self.fn(x, t, **step)


def ctmc_jump(x: Tensor, rate: Tensor, h: float) -> Tensor:
    """One CTMC Euler step of categorical states ``x`` [...] (class indices) with ``rate`` [..., K] over a
    step of size ``h``: sample from delta_x + |h| rate, clipped to a distribution (Gat et al. 2024)."""
    p = torch.nn.functional.one_hot(x.long(), rate.shape[-1]).to(rate.dtype) + abs(h) * rate
    p = p.clamp_min(0.0)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    flat = p.reshape(-1, p.shape[-1])
    return torch.multinomial(flat, 1).reshape(x.shape).to(x.dtype)


# Butcher tableaux (a, b, c) of the explicit methods.
_TABLEAUX: dict[str, tuple[list[list[float]], list[float], list[float]]] = {
    "euler": ([[]], [1.0], [0.0]),
    "midpoint": ([[], [0.5]], [0.0, 1.0], [0.0, 0.5]),
    "heun": ([[], [1.0]], [0.5, 0.5], [0.0, 1.0]),
    "rk4": ([[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6], [0.0, 0.5, 0.5, 1.0]),
}
#: order of accuracy of each fixed-step method
ORDERS = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4}


class FixedStepSolver(Solver):
    """Explicit Runge-Kutta on a uniform grid of ``steps`` steps (or an explicit ``grid``).

    Continuous fields take the method's stages; categorical fields (class indices) take a CTMC
    Euler jump with the rate at the step's start (Campbell et al. 2022; Gat et al. 2024, "Discrete
    Flow Matching"), whatever the method. Later stages see them held at the step's start while t
    moves on, a state the model never trained on (at t = 1 a still-masked token), so mixing their
    rates in resampled the types: rk4 turned most atoms of a QM9 model into N."""

    def __init__(self, method: str = "euler", steps: int = 100, grid: Sequence[float] | None = None) -> None:
        if method not in _TABLEAUX:
            raise ValueError(f"unknown fixed-step method {method!r}; use one of {sorted(_TABLEAUX)}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.method, self.steps, self.grid = method, int(steps), grid

    def _times(self, t0: float, t1: float, device: torch.device) -> Tensor:
        if self.grid is not None:
            g = torch.as_tensor(self.grid, dtype=torch.float64)
            return (t0 + (t1 - t0) * g).to(device)
        return torch.linspace(t0, t1, self.steps + 1, dtype=torch.float64, device=device)

    def integrate(self, velocity: Velocity, x0: State, t0: float, t1: float, *, trajectory: bool) -> Solution:
        """One step of the method per interval of the grid, the categorical fields jumped at each step.

        Args:
            As :meth:`Solver.integrate`.

        Returns:
            As :meth:`Solver.integrate`; the trajectory holds a state at each time of the grid.
        """
        f = _Counter(velocity)
        a, b, c = _TABLEAUX[self.method]
        device = next(iter(x0.values())).device
        tdtype = next((v.dtype for v in x0.values() if v.is_floating_point()), torch.float32)
        grid = self._times(t0, t1, torch.device("cpu"))
        hs = (grid[1:] - grid[:-1]).tolist()  # step sizes as host floats: no device sync per step
        ts = grid.to(device)
        x = dict(x0)
        traj = [dict(x)] if trajectory else []
        # the first stage's rates move the categorical fields: a velocity that can, averages them over the step
        jumps = any(is_categorical(v) for v in x0.values()) and takes_step(velocity)
        for i in range(len(ts) - 1):
            t, h = ts[i], hs[i]
            ks: list[State] = []
            for s in range(len(b)):
                xs = x
                if s > 0:
                    xs = {}
                    for name, v in x.items():
                        if is_categorical(v):
                            xs[name] = v
                        else:
                            inc = sum(a[s][j] * ks[j][name] for j in range(s) if a[s][j] != 0.0)
                            xs[name] = v + h * inc if not isinstance(inc, int) else v
                tt = (t + c[s] * h).to(tdtype)
                ks.append(f(xs, tt, step=h) if s == 0 and jumps else f(xs, tt))
            new = {}
            for name, v in x.items():
                if is_categorical(v):  # a CTMC Euler jump with the rate at the step's start (see the class doc)
                    new[name] = ctmc_jump(v, ks[0][name], h)
                    continue
                comb = sum(b[j] * ks[j][name] for j in range(len(b)) if b[j] != 0.0)
                new[name] = v + h * comb.to(v.dtype)
            x = new
            if trajectory:
                traj.append(dict(x))
        return Solution(x, f.n, ts.to(tdtype) if trajectory else None, traj)


class MeanFlowSolver(Solver):
    """Jumps with the average velocity: x_r = x_t + (r - t) u(x_t, r, t) from each time of the grid to
    the next (MeanFlow, Geng et al. 2025, eq. 12, in fmkit's direction of time); ``steps`` jumps, one
    velocity call each (1 step: x1 = x0 + u(x0, 1, 0)).

    ``velocity(x, t, r=r)`` must return the average velocity over [t, r] (what
    :func:`fmkit.flow.sampling.model_velocity` gives for a model with two times, :mod:`fmkit.flow.two_times`).
    Continuous fields only.
    """

    def __init__(self, steps: int = 1, grid: Sequence[float] | None = None) -> None:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.method, self.steps, self.grid = "meanflow", int(steps), grid

    def integrate(self, velocity: Velocity, x0: State, t0: float, t1: float, *, trajectory: bool) -> Solution:
        """The jumps x_r = x_t + (r - t) u(x_t, r, t) over the grid from t0 to t1.

        Args:
            velocity, x0, t0, trajectory: as :meth:`Solver.integrate`; ``velocity(x, t, r=r)`` returns
                the average velocity over [t, r] (see the class docstring).
            t1: the time the last jump lands on.

        Returns:
            As :meth:`Solver.integrate`; the trajectory holds the state after each jump.
        """
        categorical = [k for k, v in x0.items() if is_categorical(v)]
        if categorical:
            raise FmkitError(f"the meanflow solver jumps continuous fields only, and field(s) {categorical} are "
                             "categorical", where="solver",
                             fix="use a fixed-step solver (euler, ...) with a model trained by objective cfm")
        f = _Counter(velocity)
        device = next(iter(x0.values())).device
        tdtype = next((v.dtype for v in x0.values() if v.is_floating_point()), torch.float32)
        g = torch.as_tensor(self.grid, dtype=torch.float64) if self.grid is not None else \
            torch.linspace(0.0, 1.0, self.steps + 1, dtype=torch.float64)
        grid = t0 + (t1 - t0) * g
        x = dict(x0)
        traj = [dict(x)] if trajectory else []
        for t, r in zip(grid[:-1].tolist(), grid[1:].tolist()):
            u = f(x, torch.tensor(t, dtype=tdtype, device=device), r=torch.tensor(r, dtype=tdtype, device=device))
            x = {k: v + (r - t) * u[k].to(v.dtype) for k, v in x.items()}     # x_r = x_t + (r - t) u(x_t, r, t)
            if trajectory:
                traj.append(dict(x))
        return Solution(x, f.n, grid.to(device, tdtype) if trajectory else None, traj)


def sway_grid(steps: int, coef: float = -1.0) -> list[float]:
    """``steps + 1`` times in [0, 1] by sway sampling (Chen et al. 2024, F5-TTS):
    t = u + coef (cos(pi u / 2) - 1 + u) for u uniform on the grid. ``coef`` < 0 puts the steps
    near t = 0, where a flow from noise decides the most; coef = 0 is the uniform grid. The map is
    increasing for coef in [-1, 1]."""
    if not -1.0 <= coef <= 1.0:
        raise ValueError(f"the sway coefficient must lie in [-1, 1] (a monotone grid), got {coef}")
    u = torch.linspace(0.0, 1.0, int(steps) + 1, dtype=torch.float64)
    t = u + coef * (torch.cos(torch.pi / 2 * u) - 1.0 + u)
    t[0], t[-1] = 0.0, 1.0
    return t.tolist()


def check_continuous_only(solver: Solver, categorical: list[str]) -> None:
    """Refuse an adaptive solver for a state with categorical fields: an error-controlled ODE step
    has no meaning for jumps between classes."""
    if categorical and isinstance(solver, AdaptiveSolver):
        raise FmkitError(
            f"the adaptive solver {solver.method!r} integrates continuous fields only, and field(s) "
            f"{categorical} are categorical", where="solver",
            fix="use a fixed-step solver (euler, midpoint, heun, rk4): e.g. `solver: {name: euler, steps: 100}` "
                "or `--solver euler --steps 100`")


class AdaptiveSolver(Solver):
    """torchdiffeq ``odeint`` (dopri5, dopri8, bosh3, fehlberg2, adaptive_heun) with rtol/atol."""

    METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")

    def __init__(self, method: str = "dopri5", rtol: float = 1e-5, atol: float = 1e-5,
                 eval_points: int = 2) -> None:
        if method not in self.METHODS:
            raise ValueError(f"unknown adaptive method {method!r}; use one of {self.METHODS}")
        self.method, self.rtol, self.atol = method, float(rtol), float(atol)
        self.eval_points = max(2, int(eval_points))

    def integrate(self, velocity: Velocity, x0: State, t0: float, t1: float, *, trajectory: bool) -> Solution:
        """Error-controlled steps (``rtol``/``atol``) by torchdiffeq; refuses categorical fields.

        Args:
            As :meth:`Solver.integrate`.

        Returns:
            As :meth:`Solver.integrate`; the trajectory holds ``eval_points`` states, evenly spaced in time.
        """
        from torchdiffeq import odeint

        names = list(x0)
        check_continuous_only(self, [n for n in names if is_categorical(x0[n])])
        f = _Counter(velocity)
        dtype = x0[names[0]].dtype

        def rhs(t: Tensor, ys: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            out = f(dict(zip(names, ys)), t.to(dtype))
            return tuple(out[n] for n in names)

        n_pts = self.eval_points if trajectory else 2
        ts = torch.linspace(t0, t1, n_pts, dtype=dtype, device=x0[names[0]].device)
        ys = odeint(rhs, tuple(x0[n] for n in names), ts, method=self.method, rtol=self.rtol, atol=self.atol)
        states = [{n: ys[j][i] for j, n in enumerate(names)} for i in range(n_pts)]
        return Solution(states[-1], f.n, ts if trajectory else None, states if trajectory else [])
