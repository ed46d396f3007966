"""Equivariant OT coupling: never costlier than independent pairing, rotation invariant, exact on
rotated+permuted copies, same-size pairing only, per-atom fields carried along."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fmkit_molecules.coupling import EquivariantOTCoupling, align_pairs
from fmkit_molecules.geometry import random_rotation, remove_mean
from fmkit_molecules.source import ComFreeGaussian
from hypothesis import given, settings
from hypothesis import strategies as st
from molecules_testlib import as_batch


def independent_cost(x0, x1):
    return float((x0["pos"].double() - x1["pos"].double()).pow(2).sum())


def make(counts, seed, spread=1.5):
    g = torch.Generator().manual_seed(seed)
    n = max(counts)
    mask = torch.zeros(len(counts), n, dtype=torch.bool)
    for i, c in enumerate(counts):
        mask[i, :c] = True
    pos1 = remove_mean(torch.randn(len(counts), n, 3, generator=g, dtype=torch.float64) * spread, mask)
    x1 = {"pos": pos1, "atoms": torch.randint(0, 5, (len(counts), n), generator=g) * mask, "mask": mask}
    torch.manual_seed(seed + 100_003)  # independent of the data's generator
    x0 = {"pos": ComFreeGaussian().sample(pos1, mask), "atoms": torch.randn(len(counts), n, 5, dtype=torch.float64),
          "mask": mask}
    return x0, x1


@settings(max_examples=15, deadline=None)
@given(counts=st.lists(st.integers(2, 9), min_size=2, max_size=10), seed=st.integers(0, 10_000))
def test_total_cost_never_above_independent(counts, seed):
    x0, x1 = make(counts, seed)
    c = EquivariantOTCoupling(iters=2, max_group=4)
    y0, y1 = c.pair(x0, x1)
    assert y1 is x1
    after = independent_cost(y0, x1)
    assert after <= independent_cost(x0, x1) + 1e-9
    assert abs(after - c.last_cost) < 1e-6 * max(1.0, after)
    # only molecules of the same size were paired, and the noise stays centred with zero padding
    assert torch.equal(y0["mask"], x1["mask"])
    assert (y0["pos"][~x1["mask"]] == 0).all()
    assert torch.allclose((y0["pos"] * x1["mask"][..., None]).sum(1), torch.zeros(len(counts), 3, dtype=torch.float64),
                          atol=1e-9)


def test_ot_beats_alignment_alone_and_alignment_beats_nothing():
    x0, x1 = make([7] * 12, 3)
    raw = independent_cost(x0, x1)
    aligned_only = EquivariantOTCoupling(batch_ot=False)
    full = EquivariantOTCoupling()
    c_align = independent_cost(aligned_only.pair(x0, x1)[0], x1)
    c_full = independent_cost(full.pair(x0, x1)[0], x1)
    print(f"cost: independent {raw:.1f}, aligned pairs {c_align:.1f}, aligned + OT {c_full:.1f}")
    assert c_full <= c_align < 0.8 * raw


def test_invariant_to_rotating_the_data():
    x0, x1 = make([6, 6, 6, 6, 8, 8, 8, 5], 11)
    c = EquivariantOTCoupling(iters=3)
    y0, _ = c.pair(x0, x1)
    cost = c.last_cost
    r = random_rotation(1, generator=torch.Generator().manual_seed(5))[0]
    x1r = dict(x1, pos=x1["pos"] @ r.T)
    z0, _ = c.pair(x0, x1r)
    assert abs(c.last_cost - cost) < 1e-8 * cost
    # the aligned noise rotates with the data, the paired (and permuted) type noise is identical
    assert torch.allclose(z0["pos"], y0["pos"] @ r.T, atol=1e-8)
    assert torch.equal(z0["atoms"], y0["atoms"])


def test_the_guard_itself_is_rotation_invariant():
    """The guard against an alignment costlier than the pair as given is rotation invariant: its
    fallback is the given pair rotated by Kabsch, so the aligned noise rotates with the data (falling
    back to the pair unrotated made the result depend on the data's orientation)."""
    g = torch.Generator().manual_seed(0)
    a = remove_mean(torch.randn(20_000, 4, 3, generator=g, dtype=torch.float64), None)
    b = remove_mean(torch.randn(20_000, 4, 3, generator=g, dtype=torch.float64), None)
    r = random_rotation(20_000, generator=g)
    br = b @ r.transpose(-1, -2)
    aligned = []
    for data in (b, br):
        perm, rot, cost = align_pairs(a, data, iters=1)
        assert (cost <= (a - data).pow(2).sum((1, 2)) + 1e-9).all()  # never costlier than as given
        aligned.append(torch.gather(a, 1, perm[..., None].expand(-1, -1, 3)) @ rot.transpose(-1, -2))
    off = (aligned[1] - aligned[0] @ r.transpose(-1, -2)).abs().amax((1, 2))
    assert int((off > 1e-6).sum()) == 0, int((off > 1e-6).sum())


def test_recovers_a_rotated_and_permuted_copy(small_mols):
    syms, pos = small_mols["CC(=O)O"]
    x1 = as_batch([(syms, pos)])
    perm = torch.randperm(len(syms), generator=torch.Generator().manual_seed(0))
    r = random_rotation(1, generator=torch.Generator().manual_seed(1))[0]
    noisy = x1["pos"][:, perm] @ r.T
    p, rot, cost = align_pairs(noisy, x1["pos"], iters=4,
                               types0=x1["atoms"][:, perm], types1=x1["atoms"])
    assert cost.item() < 1e-16 + 1e-10
    aligned = noisy[0, p[0]] @ rot[0].T
    assert torch.allclose(aligned, x1["pos"][0], atol=1e-7)


def test_same_element_permutation_only_when_types_given():
    x1 = torch.tensor([[[1.0, 0, 0], [-1.0, 0, 0]]], dtype=torch.float64)
    x0 = x1[:, [1, 0]].clone()
    t1 = torch.tensor([[0, 1]])
    p, _, cost = align_pairs(x0, x1, rotate=False, types0=t1, types1=t1)
    assert p.tolist() == [[0, 1]] and cost.item() == pytest.approx(8.0)  # H and C may not swap
    p, _, cost = align_pairs(x0, x1, rotate=False)
    assert p.tolist() == [[1, 0]] and cost.item() == pytest.approx(0.0)


def test_per_atom_fields_are_permuted_with_positions():
    x0, x1 = make([5, 5, 5], 2)
    x0["atoms"] = torch.arange(15, dtype=torch.float64).reshape(3, 5, 1).expand(3, 5, 5).clone()
    x0["pos"] = x0["pos"] + 0.0
    tag = {round(v, 9): i for i, v in enumerate(x0["pos"].reshape(-1, 3).norm(dim=-1).tolist())}
    y0, _ = EquivariantOTCoupling().pair(x0, x1)
    # each output atom's radius identifies the input atom it came from; its type row came along
    for b in range(3):
        for a in range(5):
            src = tag[round(y0["pos"][b, a].norm().item(), 9)]
            assert y0["atoms"][b, a, 0].item() == float(src)
    assert np.isfinite(y0["pos"].numpy()).all()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), seed=st.integers(0, 10_000), ties=st.booleans())
def test_radial_matching_by_sorting_is_the_optimal_assignment(n, seed, ties):
    """The sort-based start of the alignment reaches the Hungarian optimum of sum (ra - rb)^2."""
    from fmkit.plugin import assignment
    from fmkit_molecules.coupling import radial_matching

    g = torch.Generator().manual_seed(seed)
    ra, rb = torch.rand(4, n, generator=g, dtype=torch.float64), torch.rand(4, n, generator=g, dtype=torch.float64)
    if ties:  # repeated radii (symmetric molecules)
        ra, rb = (ra * 3).round() / 3, (rb * 3).round() / 3
    perm = radial_matching(ra, rb)
    for p in range(4):
        assert sorted(perm[p].tolist()) == list(range(n))  # a permutation
        cost = (ra[p, :, None] - rb[p, None, :]).pow(2).numpy()
        best = assignment(cost)
        got = float((ra[p, perm[p]] - rb[p]).pow(2).sum())
        assert got == pytest.approx(float(cost[best, np.arange(n)].sum()), abs=1e-12)


@pytest.mark.parametrize("batch_ot", [True, False])
def test_pair_fields_are_permuted_on_both_axes_with_the_atoms(batch_ot):
    """A uniform bond source gives x0 real bonds (the mask source's all-mask-token bonds hide any
    mistake): each output pair (i, j) must be the assigned noise molecule's pair (perm[i], perm[j]),
    with perm the atom permutation its positions and per-atom fields received. n = 5 with one-hot
    float types [B, 5, 5] also checks that a float [B, N, N] field is still read as per atom."""
    from fmkit_molecules.graph import pair_mask

    counts = [5, 5, 5, 5, 4]
    x0, x1 = make(counts, 7)
    b, n = len(counts), max(counts)
    g = torch.Generator().manual_seed(1)
    ids = torch.arange(b * n).reshape(b, n)  # a per-atom tag: (molecule, atom) of the noise
    x0["charges"] = ids.clone()
    x0["bonds"] = torch.randint(0, 5, (b, n, n), generator=g)
    x0["atoms"] = torch.nn.functional.one_hot(torch.randint(0, 5, (b, n), generator=g), 5).double()
    x1["masks"] = {"bonds": pair_mask(x1["mask"])}
    y0, _ = EquivariantOTCoupling(batch_ot=batch_ot).pair(x0, x1)
    assert y0["masks"] is x1["masks"] and y0["mask"] is x1["mask"]
    tag = {round(v, 9): i for i, v in enumerate(x0["pos"].reshape(-1, 3).norm(dim=-1).tolist())}
    for r in range(b):
        k = counts[r]
        src = y0["charges"][r, :k]
        src_mol = int(src[0]) // n
        perm = (src % n).tolist()
        assert (src // n == src_mol).all() and sorted(perm) == list(range(k))  # one noise molecule, permuted
        assert counts[src_mol] == k
        for i in range(k):
            # positions and one-hot types came from the same noise atom as the tag
            assert tag[round(y0["pos"][r, i].norm().item(), 9)] == src_mol * n + perm[i]
            assert torch.equal(y0["atoms"][r, i], x0["atoms"][src_mol, perm[i]])
            for j in range(k):
                assert y0["bonds"][r, i, j] == x0["bonds"][src_mol, perm[i], perm[j]]
    assert torch.equal(y0["bonds"][4, :, 4], x0["bonds"][4, :, 4])  # padding pairs untouched (row 4 alone)
    if batch_ot:  # the test is only informative when some molecule was re-paired or permuted
        assert not torch.equal(y0["charges"], x0["charges"])


def test_pair_fields_are_found_by_their_mask_or_as_class_indices():
    from fmkit_molecules.coupling import pair_fields

    b, n = 2, 4
    mask = torch.ones(b, n, dtype=torch.bool)
    x0 = {"pos": torch.zeros(b, n, 3), "bonds": torch.zeros(b, n, n, dtype=torch.long),
          "onehot": torch.zeros(b, n, n), "soft_bonds": torch.zeros(b, n, n, 3), "mask": mask}
    assert pair_fields(x0, {"mask": mask}, n) == {"bonds"}
    masks = {"soft_bonds": torch.ones(b, n, n, dtype=torch.bool), "bonds": torch.ones(b, n, n, dtype=torch.bool)}
    assert pair_fields(x0, {"mask": mask, "masks": masks}, n) == {"bonds", "soft_bonds"}
