"""The graph model ``egnn_graph`` in float64: E(3) equivariance of positions and invariance of all logits,
permutation equivariance with the bond matrix permuted as P B P^T, padding isolation, only the upper
triangle of the input bonds read, symmetric bond logits, CoM-free outputs, clear errors, registry."""

from __future__ import annotations

import pytest
import torch
from fmkit.plugin import DataInfo, FieldInfo, ModelError
from fmkit_molecules.geometry import random_rotation, remove_mean
from fmkit_molecules.graph import symmetric_from_upper
from fmkit_molecules.models.egnn_graph import EGNNGraph

TOL = 1e-9
LOGITS = ("atoms", "charges", "bonds")


def build(predictions: dict[str, str] | None = None, **kw) -> EGNNGraph:
    torch.manual_seed(0)
    opts = {"hidden": 24, "message": 20, "edge": 8, "layers": 3, "rbf": 8, "num_classes": 5} | kw
    return EGNNGraph(predictions=predictions, **opts).double().eval()


def inputs(seed: int = 0, b: int = 3, n: int = 7, symmetric: bool = True):
    """A batch with padding (rows 0 and 1), mask tokens among the classes (atoms 5, charges 3, bonds 4)
    and, unless ``symmetric`` is False, a symmetric bond matrix (a sampler's lower triangle is not)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 5:] = False
    mask[1, 6:] = False
    pos = remove_mean(torch.randn(b, n, 3, generator=g, dtype=torch.float64) * 1.5, mask)
    atoms = torch.randint(0, 6, (b, n), generator=g) * mask
    charges = torch.randint(0, 4, (b, n), generator=g) * mask
    bonds = torch.randint(0, 5, (b, n, n), generator=g)
    if symmetric:
        bonds = symmetric_from_upper(bonds)
    t = torch.rand(b, generator=g, dtype=torch.float64)
    return {"pos": pos, "atoms": atoms, "charges": charges, "bonds": bonds, "mask": mask}, t


def real_pairs(mask: torch.Tensor) -> torch.Tensor:
    return (mask[:, :, None] & mask[:, None, :])[..., None]


def test_output_shapes_and_nontrivial_values():
    out = build()(*inputs())
    assert out["pos"].shape == (3, 7, 3) and out["atoms"].shape == (3, 7, 5)
    assert out["charges"].shape == (3, 7, 3) and out["bonds"].shape == (3, 7, 7, 4)
    for k in ("pos", *LOGITS):
        assert out[k].abs().max() > 1e-3, k  # not trivially zero


@pytest.mark.parametrize("reflect", [False, True])
def test_e3_equivariance_of_positions_and_invariance_of_logits(reflect):
    """Rotating (and reflecting) and translating the input rotates the position output and leaves
    every logit unchanged (E(3): EGNN sees only distances and difference vectors)."""
    m = build()
    x, t = inputs()
    out = m(x, t)
    r = random_rotation(1, generator=torch.Generator().manual_seed(3))[0]
    if reflect:
        r = r @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    xr = dict(x, pos=(x["pos"] @ r.T + shift) * x["mask"][..., None])
    out_r = m(xr, t)
    m_ = x["mask"][..., None]
    assert ((out_r["pos"] - out["pos"] @ r.T) * m_).abs().max() < TOL
    for k in LOGITS:
        assert (out_r[k] - out[k]).abs().max() < TOL, k


def test_permutation_equivariance_with_bonds_permuted_on_both_axes():
    """Permuting the atoms (positions, types, charges, mask) and the bond matrix as P B P^T permutes
    every output the same way; padding sits between real atoms after the permutation."""
    m = build()
    x, t = inputs(b=2, n=7)
    perm = torch.tensor([3, 0, 6, 5, 1, 4, 2])
    xp = {k: v[:, perm] for k, v in x.items()}
    xp["bonds"] = x["bonds"][:, perm][:, :, perm]
    out, out_p = m(x, t), m(xp, t)
    for k in ("pos", "atoms", "charges"):
        assert (out_p[k] - out[k][:, perm]).abs().max() < TOL, k
    assert (out_p["bonds"] - out["bonds"][:, perm][:, :, perm]).abs().max() < TOL


def test_padding_never_changes_real_outputs():
    """Extra padding slots and garbage in every padded atom (positions, classes) and pair (bonds) leave
    the real atoms' and real pairs' outputs unchanged; padded outputs are zero."""
    m = build()
    x, t = inputs()
    out = m(x, t)
    b, n = x["mask"].shape
    extra = 4
    g = torch.Generator().manual_seed(9)
    mask = torch.cat([x["mask"], torch.zeros(b, extra, dtype=torch.bool)], 1)
    pos = torch.cat([x["pos"], torch.randn(b, extra, 3, dtype=torch.float64, generator=g) * 50], 1)
    pos[:, :n][~x["mask"]] = 7.0
    atoms = torch.cat([x["atoms"], torch.full((b, extra), 3)], 1)
    atoms[:, :n][~x["mask"]] = 5
    charges = torch.cat([x["charges"], torch.full((b, extra), 2)], 1)
    charges[:, :n][~x["mask"]] = 0
    bonds = torch.randint(0, 5, (b, n + extra, n + extra), generator=g)
    bonds[:, :n, :n] = torch.where(real_pairs(x["mask"])[..., 0], x["bonds"], bonds[:, :n, :n])
    out2 = m({"pos": pos, "atoms": atoms, "charges": charges, "bonds": bonds, "mask": mask}, t)
    m_ = x["mask"][..., None]
    for k in ("pos", "atoms", "charges"):
        assert ((out2[k][:, :n] - out[k]) * m_).abs().max() < TOL, k
    assert ((out2["bonds"][:, :n, :n] - out["bonds"]) * real_pairs(x["mask"])).abs().max() < TOL
    for k in ("pos", "atoms", "charges"):
        assert (out2[k][~mask] == 0).all(), k
    assert (out2["bonds"] * ~real_pairs(mask)).abs().max() == 0


def test_only_the_upper_triangle_of_the_bonds_is_read():
    """A sampler jumps each bond entry independently: garbage below the diagonal and on it must not
    change any output, while a change above the diagonal does."""
    m = build()
    x, t = inputs(symmetric=False)
    out = m(x, t)
    g = torch.Generator().manual_seed(4)
    lower = torch.ones(7, 7, dtype=torch.bool).tril()  # incl. the diagonal
    other = torch.where(lower, torch.randint(0, 5, x["bonds"].shape, generator=g), x["bonds"])
    assert not torch.equal(other, x["bonds"])
    out2 = m(dict(x, bonds=other), t)
    for k in ("pos", *LOGITS):
        assert torch.equal(out2[k], out[k]), k
    upper = x["bonds"].clone()
    upper[2, 0, 3] = (upper[2, 0, 3] + 1) % 5
    assert (m(dict(x, bonds=upper), t)["bonds"] - out["bonds"]).abs().max() > 1e-6


def test_bond_logits_symmetric_with_a_zero_diagonal():
    out = build()(*inputs(symmetric=False))
    assert torch.equal(out["bonds"], out["bonds"].transpose(1, 2))
    assert (torch.diagonal(out["bonds"], dim1=1, dim2=2) == 0).all()


def test_position_output_com_free_batch_independent_and_x1_mode():
    """Velocity mode: CoM-free over the real atoms and each molecule independent of the others. x1 mode
    (the recipe's path predicts x1): the same weights output x_t + the velocity-mode output."""
    x, t = inputs()
    v = build()(x, t)
    m_ = x["mask"][..., None]
    assert (v["pos"] * m_).sum(1).abs().max() < 1e-10
    single = build()({k: val[1:2] for k, val in x.items()}, t[1:2])
    for k in ("pos", *LOGITS):
        assert (single[k] - v[k][1:2]).abs().max() < 1e-10, k
    x1 = build(predictions={"pos": "x1"})(x, t)
    torch.testing.assert_close(x1["pos"], (x["pos"] + v["pos"]) * m_, rtol=1e-12, atol=1e-12)
    for k in LOGITS:
        torch.testing.assert_close(x1[k], v[k], rtol=0, atol=0)


def test_every_parameter_gets_a_gradient():
    """No dead branch: each parameter (node, edge, coordinate and head paths) receives a gradient."""
    m = build()
    x, t = inputs()
    out = m(x, t)
    sum(out[k].square().sum() for k in ("pos", *LOGITS)).backward()
    dead = [name for name, p in m.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not dead, dead


@pytest.mark.parametrize("missing", ["bonds", "charges"])
def test_a_state_without_the_graph_is_a_clear_error(missing):
    x, t = inputs()
    del x[missing]
    with pytest.raises(ModelError, match=rf"(?s)'{missing}'.*bonds: true"):
        build()(x, t)


def test_registry_builds_the_graph_model_from_data_info():
    from fmkit.plugin import RecipeError
    from fmkit.testing import fresh_registry
    from fmkit_molecules import plugin

    reg = fresh_registry(plugin)
    info = DataInfo(fields={"pos": FieldInfo((None, 3)), "atoms": FieldInfo((None,), num_classes=5),
                            "charges": FieldInfo((None,), num_classes=3),
                            "bonds": FieldInfo((None, None), num_classes=4)}, has_mask=True)
    m = reg.build("models", {"name": "egnn_graph", "hidden": 16, "edge": 8, "layers": 1}, data_info=info)
    assert m.embed_atoms.emb.num_embeddings == 6 and m.embed_charges.num_embeddings == 4  # K + mask token
    assert m.embed_bonds.num_embeddings == 5
    with pytest.raises(RecipeError, match="unknown option"):
        reg.build("models", {"name": "egnn_graph", "edges": 8}, data_info=info)


def test_compiles_as_one_graph():
    """torch.compile (fullgraph, ``aot_eager``: no inductor C++ build) traces forward and backward to
    the eager outputs and gradients, as the GPU recipe's ``trainer.compile`` needs."""
    torch._dynamo.reset()
    m = build(layers=1).float()
    x, t = inputs()
    x["pos"], t = x["pos"].float(), t.float()

    def loss(out):
        return sum(out[k].square().sum() for k in ("pos", *LOGITS))

    eager = m(x, t)
    loss(eager).backward()
    g_eager = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    out = torch.compile(m, backend="aot_eager", fullgraph=True)(x, t)
    loss(out).backward()
    for k in ("pos", *LOGITS):
        torch.testing.assert_close(out[k], eager[k], rtol=1e-5, atol=1e-5)
    for p, g in zip(m.parameters(), g_eager):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_default_size_starts_at_unit_scale():
    """At the default (CPU recipe) size on QM9-sized molecules the untrained outputs are O(1)."""
    torch.manual_seed(0)
    m = EGNNGraph(num_classes=5).eval()
    x, t = inputs(b=4, n=18)
    x["pos"] = (x["pos"] * 1.2).float()
    with torch.no_grad():
        out = m(x, t.float())
    real = x["mask"]
    # the coordinate steps start near zero on purpose (EDM's init of EGNN's last coordinate layer)
    assert out["pos"][real].pow(2).mean().sqrt().item() < 1.0
    for k in ("atoms", "charges"):
        rms = out[k][real].pow(2).mean().sqrt().item()
        assert 1e-3 < rms < 10.0, f"{k} output rms {rms:.3g} at init"
    rms = out["bonds"][real_pairs(real)[..., 0]].pow(2).mean().sqrt().item()
    assert 1e-3 < rms < 10.0, f"bonds output rms {rms:.3g} at init"


# -- self-conditioning (self_condition: true): the previous x1 estimate read through invariant features
def estimate(x: dict, seed: int = 5) -> dict:
    """A self_cond state like the sampler's: positions near x (CoM-free), class probabilities, symmetric bonds."""
    g = torch.Generator().manual_seed(seed)
    b, n = x["mask"].shape
    pos = remove_mean(x["pos"] + 0.3 * torch.randn(b, n, 3, generator=g, dtype=torch.float64), x["mask"])
    bonds = torch.randn(b, n, n, 4, generator=g, dtype=torch.float64)
    return {"pos": pos * x["mask"][..., None],
            "atoms": torch.randn(b, n, 5, generator=g, dtype=torch.float64).softmax(-1),
            "charges": torch.randn(b, n, 3, generator=g, dtype=torch.float64).softmax(-1),
            "bonds": (0.5 * (bonds + bonds.transpose(1, 2))).softmax(-1)}


@pytest.mark.parametrize("reflect", [False, True])
def test_self_conditioned_model_stays_e3_equivariant(reflect):
    """Rotating (reflecting) and translating x_t and the estimate's positions together rotates the position
    output and leaves every logit unchanged; the estimate changes the outputs (it is read)."""
    m = build(self_condition=True)
    x, t = inputs()
    sc = estimate(x)
    out = m(x, t, self_cond=sc)
    assert (out["pos"] - m(x, t)["pos"]).abs().max() > 1e-6  # self_cond=None (zeros) differs
    r = random_rotation(1, generator=torch.Generator().manual_seed(3))[0]
    if reflect:
        r = r @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    m_ = x["mask"][..., None]
    out_r = m(dict(x, pos=(x["pos"] @ r.T + shift) * m_), t, self_cond=dict(sc, pos=(sc["pos"] @ r.T + shift) * m_))
    assert ((out_r["pos"] - out["pos"] @ r.T) * m_).abs().max() < TOL
    for k in LOGITS:
        assert (out_r[k] - out[k]).abs().max() < TOL, k


def test_self_conditioned_model_is_permutation_equivariant_and_every_parameter_learns():
    m = build(self_condition=True)
    x, t = inputs(b=2, n=7)
    sc = estimate(x)
    perm = torch.tensor([3, 0, 6, 5, 1, 4, 2])
    xp = {k: v[:, perm] for k, v in x.items()}
    xp["bonds"] = x["bonds"][:, perm][:, :, perm]
    scp = {k: v[:, perm] for k, v in sc.items()}
    scp["bonds"] = sc["bonds"][:, perm][:, :, perm]
    out, out_p = m(x, t, self_cond=sc), m(xp, t, self_cond=scp)
    for k in ("pos", "atoms", "charges"):
        assert (out_p[k] - out[k][:, perm]).abs().max() < TOL, k
    assert (out_p["bonds"] - out["bonds"][:, perm][:, :, perm]).abs().max() < TOL
    # the first pass of a self-conditioned batch (self_cond=None) reaches the estimate's layers too (DDP-safe)
    m.train()
    sum(m(x, t)[k].square().sum() for k in ("pos", *LOGITS)).backward()
    dead = [name for name, p in m.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert dead == ["sc_node.weight", "sc_edge.weight"], dead  # zeros in: only the biases learn from None
    assert m.self_conditioned and not build().self_conditioned


def test_self_cond_given_to_a_model_built_without_it_is_a_clear_error():
    x, t = inputs()
    with pytest.raises(ModelError, match="self_condition: true"):
        build()(x, t, self_cond=estimate(x))
