"""Temporary: CFMObjective equals the old cfm_loss on fixed seeds (conditional, masked, categorical, weighted, OT)."""
import torch
import fmkit
from fmkit.engine.objective import cfm_loss
from fmkit.flow.objectives import CFMObjective
from fmkit.flow.paths import AffinePath, CondOTScheduler, DiscretePath, StatePath
from fmkit.flow.sources import GaussianSource, StateSource, CategoricalSource
from fmkit.flow.couplings import ExactOTCoupling, IndependentCoupling


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Linear(8 + 4 + 2, 8 + 12)
    def forward(self, x_t, t, cond):
        b = t.shape[0]
        h = torch.cat([x_t["pos"].reshape(b, -1), x_t["atoms"].float().reshape(b, -1), t[:, None], cond.float()[:, None]], 1)
        o = self.f(h)
        return {"pos": o[:, :8].reshape(b, 4, 2), "atoms": o[:, 8:].reshape(b, 4, 3)}


def test_equal():
    torch.manual_seed(0)
    net = Net()
    path = StatePath(AffinePath(CondOTScheduler(0.01)), {"atoms": DiscretePath("mask")})
    src = StateSource(GaussianSource(), {"atoms": CategoricalSource(3, "mask")})
    b = 16
    x1 = {"pos": torch.randn(b, 4, 2), "atoms": torch.randint(0, 3, (b, 4)), "mask": torch.rand(b, 4) > 0.3,
          "cond": torch.randint(0, 5, (b,))}
    time = lambda n, d: torch.rand(n, device=d) ** 2
    for coupling in (IndependentCoupling(), ExactOTCoupling()):
        torch.manual_seed(3)
        a, pa = cfm_loss(net, path, src, coupling, dict(x1), time=time, cond_dropout=0.3, null_cond=5,
                         loss_weights={"atoms": 0.5})
        obj = CFMObjective(path, src, coupling, time=time, cond_dropout=0.3, null_class=5, weights={"atoms": 0.5})
        torch.manual_seed(3)
        c, pc = obj(net, dict(x1))
        assert torch.equal(a, c), (a, c)
        assert pa.keys() == pc.keys() and all(torch.equal(pa[k], pc[k]) for k in pa)
