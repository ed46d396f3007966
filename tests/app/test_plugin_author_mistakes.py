"""A plugin author's mistakes are named as theirs: a model or factory failing under
``fmkit.testing.fresh_registry`` / ``run_cli`` is attributed to its file and line (not "internal
error"), a coupling that re-orders x1 without its labels or changes its values is a ContractError
before the first update, and ``check_coupling`` takes bare tensors as documented.
"""

from __future__ import annotations

from pathlib import Path

import fmkit
import pytest
import torch
from reliability_helpers import TINY, isolate


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    isolate(tmp_path, monkeypatch)


NET_SOURCE = '''
from torch import nn


class Net(nn.Module):
    def __init__(self, data_info):
        super().__init__()
        self.lin = nn.Linear(2, 2)

    def forward(self, x_t, t, cond=None):
        raise RuntimeError("boom in the author's forward")


def broken_factory(data_info):
    raise RuntimeError("boom in the author's factory")
'''


def test_an_authors_model_or_factory_failing_under_fresh_registry_is_attributed_to_them(tmp_path, monkeypatch):
    """A model or factory of the author's package that fails, registered by the plugin object of their
    own test (``fresh_registry``), is an error in that plugin with its file:line, not an fmkit internal
    error."""
    import sys

    from fmkit.testing import fresh_registry as authors_registry
    from fmkit.testing import run_cli

    pkg = tmp_path / "acme_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "net.py").write_text(NET_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "acme_pkg", raising=False)
    from acme_pkg.net import Net, broken_factory

    class AuthorsPlugin:
        @fmkit.hookimpl
        def register_models(self, register):
            register("net", Net)
            register("broken", broken_factory)

    for name, needle in (("net", "acme_pkg/net.py:11, in forward): RuntimeError: boom in the author's forward"),
                         ("broken", "acme_pkg/net.py:15, in broken_factory): RuntimeError: boom")):
        Path("a.yaml").write_text(TINY.replace("mlp, hidden: 8, depth: 1, time_dim: 4", name))
        r = run_cli("train", "a.yaml", "--out", f"run_{name}", registry=authors_registry(AuthorsPlugin()))
        assert r.code == 1 and "internal error" not in r.err, r.err
        assert "error in plugin" in r.err and needle in " ".join(r.err.split()), r.err


def _coupling(reorder):
    """A coupling returning x0 as given and x1 as ``reorder(x1)``."""
    from fmkit import Coupling

    class Reorders(Coupling):
        def pair(self, x0, x1):
            return x0, reorder(x1)

    return Reorders()


def _labelled_trainer(coupling):
    from fmkit import Trainer, TrainerOptions
    from fmkit.app.builtin.mlp import MLP
    from fmkit.flow.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    ds = TensorDataset({"x": torch.randn(64, 2, generator=g), "cond": torch.randint(0, 3, (64,), generator=g)},
                       num_cond_classes=3)
    opts = TrainerOptions(steps=3, batch_size=16, device="cpu", progress=False)
    return Trainer(MLP.from_data(ds.info, hidden=8, depth=1, time_dim=4), ds, coupling=coupling, options=opts)


def test_a_coupling_reordering_x1_but_not_its_cond_is_a_contract_error_before_training():
    """A coupling that re-orders x1 but not its cond is the ContractError docs/plugins.md promises,
    before the first update (it used to train on mismatched labels); a permutation of x1 as a whole is
    allowed."""
    from fmkit.errors import ContractError

    flip_x_only = _coupling(lambda x1: {**x1, "x": x1["x"].flip(0)})
    tr = _labelled_trainer(flip_x_only)
    with pytest.raises(ContractError) as e:
        tr.fit()
    assert "re-ordered x1 but not its 'cond' with it" in e.value.what and "Reorders" in e.value.what
    assert tr.step == 0  # before the first update
    changed = _coupling(lambda x1: {**x1, "x": x1["x"] + 1})
    with pytest.raises(ContractError, match="changed the values of x1's 'x'"):
        _labelled_trainer(changed).fit()
    whole = _coupling(lambda x1: {k: v.flip(0) for k, v in x1.items()})  # a permutation of x1 as a whole: allowed
    assert _labelled_trainer(whole).fit().step == 3


def test_check_coupling_takes_bare_tensors_as_documented():
    """``check_coupling`` takes bare tensors as documented (they used to reach the author's pair()
    malformed), and still catches a coupling that is not a permutation."""
    from fmkit import ExactOTCoupling
    from fmkit.testing import check_coupling

    g = torch.Generator().manual_seed(0)
    check_coupling(ExactOTCoupling(), torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g))
    bad = _coupling(lambda x1: {"x": x1["x"] * 2})
    with pytest.raises(AssertionError, match="not a permutation"):
        check_coupling(bad, torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g))
