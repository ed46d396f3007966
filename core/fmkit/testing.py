"""Contract checks and test helpers for plugin authors: call them in your plugin's own tests.

Each ``check_*`` returns nothing when the component keeps its contract and otherwise raises, saying
what broke it: an ``AssertionError``, except where the core's own check runs (the one training runs
too): ``check_dataset`` raises :class:`~fmkit.errors.ContractError` for examples or a batch that do
not fit the dataset's info, ``check_model`` a :class:`~fmkit.errors.ModelError` (a ContractError) for
an output of the wrong fields or shapes. ``pytest.raises((AssertionError, ContractError))`` catches
every breach::

    from fmkit.testing import check_dataset, check_model

    def test_my_dataset():
        check_dataset(MyDataset(root=...))

    def test_my_model():
        ds = MyDataset(root=...)
        check_model(MyNet(data_info=ds.info), ds)

``check_two_time_model`` checks the contract of a model with two times (u(x, r, t), what objective
meanflow trains; :mod:`fmkit.flow.two_times`).

``fresh_registry(*plugins)`` is a registry with the built-in plugin and yours only (no other
installed plugin), ``use_registry(reg)`` makes it the one the CLI sees, ``run_cli(*args)`` runs
``fmkit ARGS`` in-process, plugin sub-commands included, returning its exit code and output, and
``read_metrics(run_dir)`` reads a run's ``metrics.csv`` as ``{name: [(step, value), ...]}``.

An end-to-end test trains through the library as a user does, with the names re-exported here:
``build_trainer(recipe, run_dir, registry)`` (the recipe from :func:`fmkit.plugin.load_recipe`),
``build_components(recipe, registry)``, and ``Trainer``/``TrainerOptions`` for a model and dataset
of the plugin's own. With :mod:`fmkit.plugin` that is all a plugin's tests import from fmkit.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from fmkit import Trainer, TrainerOptions  # noqa: F401 - re-exported: the library route of end-to-end tests
from fmkit.app.run import build_components, build_trainer  # noqa: F401 - re-exported, as above
from fmkit.engine.metrics_log import read_metrics  # noqa: F401 - re-exported: a run's metrics.csv by name
from fmkit.flow.couplings import Coupling
from fmkit.flow.data import Dataset
from fmkit.flow.data_check import check_dataset as _check_contract
from fmkit.flow.objectives import MeanFlowObjective  # noqa: F401 - re-exported: a two-time model's step
from fmkit.flow.paths import ProbPath
from fmkit.flow.solvers import Solution, Solver
from fmkit.flow.state import COND, MASK, State, as_state, broadcast_mask, field_mask, fields

__all__ = ["CliResult", "MeanFlowObjective", "Trainer", "TrainerOptions", "build_components", "build_trainer",
           "check_coupling", "check_dataset", "check_model", "check_path", "check_solver", "check_two_time_model",
           "fresh_registry", "read_metrics", "run_cli", "use_registry"]


def check_dataset(dataset: Dataset, *, n: int = 4, batch_size: int = 2, seed: int = 0) -> None:
    """The contract of :mod:`fmkit.flow.data`: examples and a collated batch fit ``dataset.info``
    (shapes, dtypes, masks, labels), and batch order, ``reference`` and ``template`` are functions of
    their seed (what exact resume and DDP sharding rely on)."""
    _check_contract(dataset, who=type(dataset).__name__, n=n)
    batch_size = min(batch_size, len(dataset))
    a, b = dataset.batches(0, batch_size, seed), dataset.batches(0, batch_size, seed)
    assert [list(map(int, x)) for x in a] == [list(map(int, x)) for x in b], "batches(epoch, bs, seed) is not a " \
        "function of its arguments: two calls gave different orders"
    for name in ("reference", "template"):
        one, two = getattr(dataset, name)(batch_size, seed=seed), getattr(dataset, name)(batch_size, seed=seed)
        _assert_same(one, two, f"dataset.{name}(n, seed) twice")


def check_model(model: nn.Module, data: Dataset, *, batch_size: int = 3, seed: int = 0, atol: float = 1e-5,
                equivariance: Callable[[State], tuple[State, Callable[[State], State]]] | None = None) -> None:
    """A velocity model's contract on a batch of ``data``: ``forward(x_t, t, cond)`` returns each field
    of the data in its shape, finite; the same input gives the same output (eval mode); each example's
    output does not depend on the other examples; padded entries (``mask`` False) have no influence on
    real ones. ``equivariance(x) -> (g x, g_out)``: checks ``model(g x) == g_out(model(x))``.

    Args:
        model: the velocity model under test (put in eval mode).
        data: a dataset whose ``template(batch_size, seed)`` gives the input fields, mask and cond.
        batch_size: examples in the batch checked (at least 2 to check that examples do not interact).
        seed: seeds the template and the times, so a failure repeats.
        atol: tolerance of the repeat and batch-independence comparisons (the mask and equivariance
            checks allow 100 * atol).
        equivariance: ``x_t -> (g x_t, g_out)`` for a symmetry g the model must respect, ``g_out`` acting
            on the output; None: not checked.

    Raises:
        AssertionError: a broken contract, with what broke.
    """
    from fmkit.flow.paths.base import check_output

    model.eval()
    g = torch.Generator().manual_seed(seed)
    x = data.template(batch_size, seed=seed)
    t = torch.rand(batch_size, generator=g)
    cond = x.get(COND)
    x_t = {k: v for k, v in x.items() if k != COND}
    with torch.no_grad():
        out = model(x_t, t, cond)
        check_output(out, fields(x_t), f"{type(model).__name__}.forward")
        for k, v in fields(out).items():
            assert torch.isfinite(v).all(), f"model output {k!r} holds NaN/Inf"
        _assert_same(out, model(x_t, t, cond), "two calls on the same input (model.eval())", atol=atol)
        one = model(_rows(x_t, slice(0, 1)), t[:1], None if cond is None else _rows(cond, slice(0, 1)))
        _assert_same(_rows(out, slice(0, 1)), one, "example 0 alone vs in the batch (examples must not interact)",
                     atol=atol)
        mask = x_t.get(MASK)
        if mask is not None and not bool(mask.all()):
            noisy = dict(x_t)
            for k, v in fields(x_t).items():
                if v.is_floating_point():
                    pad = ~broadcast_mask(field_mask(x_t, k), v).expand_as(v)
                    noisy[k] = torch.where(pad, torch.randn(v.shape, generator=g) * 100, v)
            moved = model(noisy, t, cond)
            for k, v in fields(out).items():
                real = broadcast_mask(field_mask(x_t, k), v).expand_as(v)
                assert torch.allclose(v[real], moved[k][real], atol=atol * 100), \
                    f"padded entries change the model's output on real entries of {k!r}"
        if equivariance is not None:
            gx, g_out = equivariance(x_t)
            _assert_same(model(gx, t, cond), g_out(out), "model(g x) vs g model(x) (equivariance)", atol=atol * 100)


def check_two_time_model(model: nn.Module, data: Dataset, *, batch_size: int = 3, seed: int = 0,
                         atol: float = 1e-5) -> None:
    """The contract of a model with two times (:mod:`fmkit.flow.two_times`) on a batch of ``data``:
    ``forward`` takes the keyword ``r``; ``r = t`` gives what ``r=None`` gives (u(x, t, t) = v(x, t), so
    plain flow matching is unchanged); another ``r`` changes the output (the model does use it); and a
    forward-mode JVP through (x_t, r, t), as objective meanflow takes it, runs and is finite. A model that
    also takes its guidance scale (``guidance_input``, :mod:`fmkit.flow.guidance_input`): ``guidance`` of 1
    gives what ``guidance=None`` gives, another scale changes the output of a conditioned batch, and the
    JVP runs with it.

    Args:
        model: the two-time model under test (put in eval mode).
        data: a dataset whose ``template(batch_size, seed)`` gives the input fields, mask and cond.
        batch_size: examples in the batch checked.
        seed: seeds the template, the times and the JVP's tangent, so a failure repeats.
        atol: tolerance of the r = t comparison, and the least change r must make to the output.

    Raises:
        AssertionError: a broken contract, with what broke.
    """
    from fmkit.flow.objectives.meanflow import AverageVelocityJVP
    from fmkit.flow.guidance_input import takes_guidance
    from fmkit.flow.paths.base import check_output
    from fmkit.flow.two_times import takes_r

    assert takes_r(model), f"{type(model).__name__}.forward has no keyword `r` (the other time of u(x, r, t))"
    model.eval()
    g = torch.Generator().manual_seed(seed)
    x = data.template(batch_size, seed=seed)
    t = torch.rand(batch_size, generator=g) * 0.5
    cond = x.get(COND)
    x_t = {k: v for k, v in x.items() if k != COND}
    with torch.no_grad():
        plain = model(x_t, t, cond)
        same = model(x_t, t, cond, r=t.clone())
        check_output(same, fields(x_t), f"{type(model).__name__}.forward(..., r=r)")
        _assert_same(plain, same, "r = t vs r = None (u(x, t, t) must be the one-time model's v(x, t))", atol=atol)
        other = model(x_t, t, cond, r=t + 0.5)
        moved = max(float((other[k].double() - plain[k].double()).abs().max()) for k in fields(plain))
        assert moved > atol, "the output does not change with r: the model ignores its second time"
    tangent = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in fields(x_t).items()
               if v.is_floating_point()}
    u, dudt = AverageVelocityJVP(model)(x_t, t, cond, r=t + 0.5, tangent=tangent)
    for k, d in dudt.items():
        assert d.shape == u[k].shape and torch.isfinite(d).all(), f"the JVP of the output {k!r} is not finite"
    if not takes_guidance(model):
        return
    assert cond is not None, f"{type(model).__name__} takes a guidance scale: check it on conditional data " \
        "(labels in cond)"
    ones = torch.ones(batch_size)
    with torch.no_grad():
        _assert_same(other, model(x_t, t, cond, r=t + 0.5, guidance=ones),
                     "guidance = 1 vs guidance = None (omega = 1 must be the model without guidance)", atol=atol)
        guided = model(x_t, t, cond, r=t + 0.5, guidance=3.0 * ones)
        moved = max(float((guided[k].double() - other[k].double()).abs().max()) for k in fields(other))
        assert moved > atol, "the output does not change with the guidance scale: the model ignores it"
    u, dudt = AverageVelocityJVP(model)(x_t, t, cond, r=t + 0.5, tangent=tangent, guidance=2.0 * ones)
    for k, d in dudt.items():
        assert torch.isfinite(d).all(), f"the JVP of the output {k!r} with a guidance scale is not finite"


def check_path(path: ProbPath, x0: Tensor, x1: Tensor, *, atol: float = 1e-4) -> None:
    """A continuous path's contract: ``sample(x0, x1, t)`` keeps shapes, and its ``dx_t`` is the time
    derivative of ``x_t`` along the same (x0, x1) (a central finite difference in float64)."""
    x0, x1 = x0.double(), x1.double()
    b = x0.shape[0]
    t = torch.linspace(0.2, 0.8, b, dtype=torch.float64)
    ps = path.sample(x0, x1, t)
    assert ps.x_t.shape == x0.shape and ps.dx_t.shape == x0.shape, \
        f"x_t {tuple(ps.x_t.shape)} / dx_t {tuple(ps.dx_t.shape)} for data of shape {tuple(x0.shape)}"
    h = 1e-5
    fd = (path.sample(x0, x1, t + h).x_t - path.sample(x0, x1, t - h).x_t) / (2 * h)
    err = float((fd - ps.dx_t).abs().max())
    assert err < atol, f"dx_t differs from d x_t / dt by {err:.2e} (atol {atol}): the target velocity is not the " \
        "derivative of the path (a stochastic path must draw its noise from a generator it is given)"


def check_coupling(coupling: Coupling, x0: State | Tensor, x1: State | Tensor) -> None:
    """A coupling's contract: ``pair(x0, x1)`` returns the same fields and shapes; x1 (with its mask
    and cond) is kept or permuted as a whole; x0's rows are a permutation of the given ones. ``x0``
    and ``x1`` are states or bare tensors (a bare tensor is the state ``{"x": tensor}``, as
    ``Coupling.__call__`` hands it to ``pair``)."""
    x0, _ = as_state(x0)
    x1, _ = as_state(x1)
    r0, r1 = coupling.pair(dict(x0), dict(x1))
    for side, given, got in (("x0", x0, r0), ("x1", x1, r1)):
        for k, v in given.items():
            assert k in got and got[k].shape == v.shape, f"pair() dropped or reshaped {side}[{k!r}]"
    for side, given, got in (("x0", x0, r0), ("x1", x1, r1)):
        for k, v in fields(given).items():
            a = sorted(map(tuple, v.reshape(v.shape[0], -1).tolist()))
            b = sorted(map(tuple, got[k].reshape(v.shape[0], -1).tolist()))
            assert a == b, f"{side}[{k!r}] rows after pair() are not a permutation of the given rows"
    first = next(iter(fields(x1)))
    index = {tuple(row): i for i, row in enumerate(x1[first].reshape(x1[first].shape[0], -1).tolist())}
    order = [index[tuple(row)] for row in r1[first].reshape(r1[first].shape[0], -1).tolist()]
    for k, v in x1.items():
        assert torch.equal(r1[k], v[order]), f"x1[{k!r}] did not travel with x1's rows"


def check_solver(solver: Solver, *, rate: float = -1.0, tol: float = 1e-2) -> None:
    """A solver's contract on the linear ODE dx/dt = rate * x from t = 0 to 1 (exact: x0 exp(rate)):
    it returns a :class:`Solution` whose final state is within ``tol`` (relative) and counts its
    evaluations; backwards (1 -> 0) it returns to x0."""
    x0 = torch.linspace(0.5, 2.0, 6, dtype=torch.float64).reshape(3, 2)
    calls = 0

    def v(x: Tensor, t: Tensor) -> Tensor:
        nonlocal calls
        calls += 1
        return rate * x

    sol = solver.solve(v, x0)
    assert isinstance(sol, Solution), f"solve returned {type(sol).__name__}"
    exact = x0 * torch.exp(torch.tensor(rate, dtype=torch.float64))
    err = float(((sol.x - exact).abs() / exact.abs()).max())
    assert err < tol, f"relative error {err:.2e} on dx/dt = {rate} x (tol {tol})"
    assert sol.nfe == calls, f"Solution.nfe = {sol.nfe} but the velocity was called {calls} times"
    back = solver.solve(v, sol.x, 1.0, 0.0)
    err = float(((back.x - x0).abs() / x0.abs()).max())
    assert err < 2 * tol, f"integrating back from t = 1 to 0 misses x0 by {err:.2e} (relative)"


def fresh_registry(*plugins: object) -> Any:
    """A registry with the built-in plugin and ``plugins`` only: no installed entry point, so a test
    does not depend on what else is installed."""
    from fmkit.app.registry import Registry

    return Registry.fresh(entry_points=False, plugins=plugins)


@contextlib.contextmanager
def use_registry(registry: Any) -> Iterator[Any]:
    """Make ``registry`` the process-wide one (what the CLI and ``fmkit.load_recipe`` use) inside the
    block, and register its plugins' sub-commands on the CLI."""
    from fmkit.app.registry import set_registry

    old = set_registry(registry)
    try:
        yield registry
    finally:
        set_registry(old)


@dataclass
class CliResult:
    """What ``fmkit ARGS`` did: exit code, standard output and standard error."""

    code: int
    out: str
    err: str


def run_cli(*args: object, registry: Any = None) -> CliResult:
    """Run ``fmkit ARGS`` in-process as the console script does (errors printed, exit code caught),
    with ``registry`` (default: the process-wide one) and its plugins' sub-commands."""
    import fmkit.app.cli as cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    argv = sys.argv
    sys.argv = ["fmkit", *(str(a) for a in args)]
    ctx = use_registry(registry) if registry is not None else contextlib.nullcontext()
    try:
        with ctx, cli.as_new_process(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.run()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv
    return CliResult(code, out.getvalue(), err.getvalue())


def _rows(x: Any, idx: slice) -> Any:
    if isinstance(x, Tensor):
        return x[idx]
    return {k: _rows(v, idx) for k, v in x.items()}


def _assert_same(a: Any, b: Any, what: str, atol: float = 0.0) -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.shape == b.shape, f"{what}: shapes differ"
        ok = torch.equal(a, b) if atol == 0.0 or not a.is_floating_point() else torch.allclose(a, b, atol=atol)
        assert ok, f"{what}: outputs differ (max {float((a.double() - b.double()).abs().max()):.2e})"
        return
    assert isinstance(b, dict) and set(a) == set(b), f"{what}: fields differ ({sorted(a)} vs {sorted(b)})"
    for k in a:
        _assert_same(a[k], b[k], f"{what}, field {k!r}", atol)
