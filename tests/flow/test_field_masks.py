"""Per-field masks (``state["masks"]``): a per-pair field [B,N,N] masked by its own pair mask flows
through the loss, the sources, the couplings, sampling and guidance with no special case."""

from __future__ import annotations

import torch
from torch import nn

from fmkit import AffinePath, CondOTScheduler, FixedStepSolver, GaussianSource
from fmkit.flow.couplings import ExactOTCoupling, IndependentCoupling, draw_and_pair
from fmkit.flow.guidance import ClassifierFreeGuidance
from fmkit.flow.paths import DiscretePath, StatePath
from fmkit.flow.sampling import generate
from fmkit.flow.sources import CategoricalSource, StateSource
from fmkit.flow.state import MASKS, field_mask, fields

B, N, K = 4, 5, 3


def pair_state(seed: int = 0) -> dict:
    """Atoms of 5, 4, 3, 5 real nodes; a symmetric pair field; the pair mask is i < j, both real."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, N, dtype=torch.bool)
    for i, n in enumerate((5, 4, 3, 5)):
        mask[i, :n] = True
    upper = torch.ones(N, N, dtype=torch.bool).triu(1)
    pmask = mask[:, :, None] & mask[:, None, :] & upper
    bonds = torch.randint(0, K, (B, N, N), generator=g)
    bonds = torch.where(upper, bonds, bonds.transpose(1, 2)) * pmask
    pos = torch.randn(B, N, 3, generator=g) * mask[..., None]
    return {"pos": pos, "bonds": bonds, "mask": mask, MASKS: {"bonds": pmask}}


def paths() -> StatePath:
    return StatePath(AffinePath(CondOTScheduler()), {"bonds": DiscretePath("mask")})


def sources() -> StateSource:
    return StateSource(GaussianSource(), {"bonds": CategoricalSource(K, "mask")})


def test_field_mask_prefers_the_fields_own_mask():
    x = pair_state()
    assert field_mask(x, "bonds") is x[MASKS]["bonds"]
    assert field_mask(x, "pos") is x["mask"]
    assert field_mask({"x": torch.zeros(1)}, "x") is None


def test_loss_of_a_pair_field_is_its_mean_over_the_real_pairs_only():
    x1 = pair_state()
    path = paths()
    x0 = sources().sample(x1)
    t = torch.full((B,), 0.3)
    ps = path.sample(x0, x1, t)
    g = torch.Generator().manual_seed(1)
    pred = {"pos": torch.randn(B, N, 3, generator=g), "bonds": torch.randn(B, N, N, K, generator=g)}
    loss = path.losses(pred, ps, x1)["bonds"]
    pm = x1[MASKS]["bonds"]
    ce = torch.nn.functional.cross_entropy(pred["bonds"].reshape(-1, K), x1["bonds"].reshape(-1),
                                           reduction="none").reshape(B, N, N)
    want = (ce * pm).sum((1, 2)) / pm.sum((1, 2))
    assert torch.allclose(loss, want, atol=1e-6)
    # logits of pairs outside the pair mask (lower triangle, padding) do not count
    junk = pred["bonds"].clone()
    junk[~pm] = 1e3
    assert torch.allclose(path.losses({"pos": pred["pos"], "bonds": junk}, ps, x1)["bonds"], loss, atol=1e-6)


def test_sources_use_each_fields_mask_and_pass_masks_along():
    x1 = pair_state()
    x0 = StateSource(GaussianSource(), {"bonds": CategoricalSource(K, "uniform")}).sample(x1)
    pm = x1[MASKS]["bonds"]
    assert (x0["bonds"][~pm] == 0).all()  # a uniform draw on the real pairs, zero elsewhere
    assert x0["bonds"][pm].unique().numel() > 1
    assert x0[MASKS]["bonds"] is pm and x0["mask"] is x1["mask"]


def test_couplings_keep_the_per_field_masks_with_the_data():
    x1 = pair_state()
    for coupling in (IndependentCoupling(), ExactOTCoupling()):
        x0, y1 = draw_and_pair(sources(), coupling, x1)
        assert y1[MASKS]["bonds"] is x1[MASKS]["bonds"]
        assert set(fields(x0)) == {"pos", "bonds"} and x0["bonds"].shape == (B, N, N)


class PairNet(nn.Module):
    """Records the masks it is given; returns zero velocity and uniform logits."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, cond=None):
        self.seen.append(x_t.get(MASKS))
        b = x_t["pos"].shape[0]
        return {"pos": torch.zeros_like(x_t["pos"]) + self.w,
                "bonds": torch.zeros(b, N, N, K) + self.w}


def test_generate_hands_the_masks_to_every_model_call_and_returns_them():
    x = pair_state()
    net = PairNet()
    sol = generate(net, paths(), sources(), FixedStepSolver("euler", steps=4), x)
    assert len(net.seen) == 4 and all(m is not None and m["bonds"] is x[MASKS]["bonds"] for m in net.seen)
    assert sol.x[MASKS]["bonds"] is x[MASKS]["bonds"]
    assert sol.x["bonds"].shape == (B, N, N) and not sol.x["bonds"].is_floating_point()


def test_guidance_doubles_the_per_field_masks_with_the_batch():
    x = pair_state()
    net = PairNet()
    cfg = ClassifierFreeGuidance(net, 2.0, null_class=9)
    out = cfg({k: v for k, v in x.items()}, torch.rand(B), torch.zeros(B, dtype=torch.long))
    assert net.seen[-1]["bonds"].shape == (2 * B, N, N)
    assert out["bonds"].shape == (B, N, N, K)


def test_flat_tensors_round_trip_names_nested_entries():
    from fmkit.flow.state import flat_tensors, nest_tensors

    x = pair_state()
    flat = flat_tensors(x)
    assert set(flat) == {"pos", "bonds", "mask", "masks.bonds"}
    back = nest_tensors(flat)
    assert torch.equal(back[MASKS]["bonds"], x[MASKS]["bonds"]) and torch.equal(back["bonds"], x["bonds"])


def test_chunks_of_different_sizes_join_with_pair_fields_padded_on_both_axes():
    from fmkit.engine.evaluation import _concat

    a, b = pair_state(0), pair_state(1)
    small = {k: (v[:, :3, :3] if k == "bonds" else v[:, :3]) for k, v in b.items() if k != MASKS}
    small[MASKS] = {"bonds": b[MASKS]["bonds"][:, :3, :3]}
    out = _concat([a, small])
    assert out["bonds"].shape == (2 * B, N, N) and out["pos"].shape == (2 * B, N, 3)
    assert out[MASKS]["bonds"].shape == (2 * B, N, N)
    assert torch.equal(out["bonds"][B:, :3, :3], small["bonds"]) and (out["bonds"][B:, 3:, :] == 0).all()
    assert not out[MASKS]["bonds"][B:, :, 3:].any() and not out["mask"][B:, 3:].any()
