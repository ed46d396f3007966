"""Equivariant OT coupling for molecules (Klein et al. 2023, "Equivariant flow matching"; Song et al.
2023 "Equivariant flow matching with hybrid probability transport"; Irwin et al. 2024, SemlaFlow).

For every (noise i, data j) pair of molecules with the same atom count, the noise is aligned to the
data: its atoms are permuted to the data atoms (Hungarian on squared distances; over all atoms, as
the noise has no elements yet; ``align_pairs`` takes types for same-element matching) and it is rotated
onto the data (Kabsch), alternating a few times. The aligned squared distances form the cost matrix
of an exact minibatch OT (assignment) among molecules of equal size; each data molecule is finally
paired with the aligned copy of its assigned noise. The cost is on positions only (as in SemlaFlow):
the noise's types, charges and bonds do not enter it, they are carried along: every per-atom field
(``atoms``, ``charges``) is permuted with the atoms, every per-pair field (``bonds`` [B,N,N]) on both
axes, B0' = P B0 P^T.

Rotation invariance: the first permutation matches atoms by their distance to the centre (a
rotation-invariant quantity), so every later step is equivariant and rotating the data rotates the
aligned noise with it. Guard: a pair whose alignment came out costlier than its atoms as given, only
rotated onto the data (Kabsch), takes that form instead; it is never costlier than the pair as given,
so the coupling's total cost never exceeds the independent pairing's, and it is rotation invariant too.
"""

from __future__ import annotations

import numpy as np
import torch
from fmkit.plugin import Coupling, State, assignment, require_finite
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from fmkit_molecules.geometry import kabsch

#: the keys that ride beside the fields, taken from the data x1 (the core's ``state.PASSENGERS``)
PASSENGERS = ("mask", "masks", "cond")


class EquivariantOTOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    iters: int = Field(2, ge=0, description="rounds of (Kabsch rotation, Hungarian permutation) per pair")
    permute: bool = Field(True, description="optimise the atom order of the noise (Hungarian)")
    rotate: bool = Field(True, description="optimise the orientation of the noise (Kabsch)")
    batch_ot: bool = Field(True, description="re-pair molecules by exact OT on the aligned costs")
    max_group: int = Field(64, ge=1, description="OT among at most this many same-size molecules at a time "
                                                 "(cost grows with its square)")


def radial_matching(ra: Tensor, rb: Tensor) -> Tensor:
    """The assignment minimising sum_j (ra[perm[j]] - rb[j])^2 for each row of [P, n] radii: on a
    line a convex cost of the difference is minimised by matching in sorted order, so one batched
    sort replaces a Hungarian solve per pair. Returns ``perm`` [P, n] (data atom j <- noise perm[j])."""
    perm = torch.empty_like(rb, dtype=torch.long)
    return perm.scatter_(1, rb.argsort(dim=1), ra.argsort(dim=1))


def align_pairs(x0: Tensor, x1: Tensor, *, iters: int = 2, permute: bool = True, rotate: bool = True,
                types0: Tensor | None = None, types1: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Align each noise cloud ``x0[p]`` [P, n, 3] to ``x1[p]`` (both centred, no padding), so that
    the pair's straight path does not waste motion on a rotation or a relabelling of the atoms.

    Args:
        x0: the noise positions [P, n, 3] (Angstrom), centred.
        x1: the data positions [P, n, 3], centred; pair p is (x0[p], x1[p]).
        iters: rounds of (Kabsch rotation, Hungarian permutation), alternated.
        permute: optimise the atom order of the noise (Hungarian).
        rotate: optimise the orientation of the noise (Kabsch).
        types0: element of each noise atom [P, n] (long); with ``types1``, only equal elements are matched.
        types1: element of each data atom [P, n] (long).

    Returns:
        ``(perm [P, n] long, R [P, 3, 3], cost [P])`` such that ``x0[p, perm[p]] @ R[p].T`` is the
        aligned noise and ``cost`` its squared distance to ``x1[p]`` (Angstrom^2), never above the
        unaligned pair's cost after the best rotation alone.
    """
    p, n, _ = x0.shape
    dt = torch.float64
    a, b = x0.to(dt), x1.to(dt)
    eye = torch.eye(3, dtype=dt, device=a.device).expand(p, 3, 3).clone()
    ident = torch.arange(n, device=a.device).expand(p, n).clone()
    penalty = None
    if types0 is not None and types1 is not None:
        penalty = (types0[:, :, None] != types1[:, None, :]).to(dt) * 1e6
        penalty = penalty.cpu().numpy()

    def hungarian(src: Tensor) -> Tensor:
        c = torch.cdist(src, b).pow(2).cpu().numpy()  # [P, n(src), n(ref)]
        if penalty is not None:
            c = c + penalty
        return torch.as_tensor(np.stack([assignment(ci) for ci in c]), device=a.device)

    def gather(perm: Tensor) -> Tensor:
        return torch.gather(a, 1, perm.unsqueeze(-1).expand(p, n, 3))

    perm, rot = ident, eye
    if permute:  # rotation-invariant start: match atoms by radius from the centre
        ra, rb = a.norm(dim=-1), b.norm(dim=-1)
        if penalty is None:
            perm = radial_matching(ra, rb)
        else:
            c = (ra[:, :, None] - rb[:, None, :]).pow(2).cpu().numpy() + penalty
            perm = torch.as_tensor(np.stack([assignment(ci) for ci in c]), device=a.device)
    for _ in range(iters):
        if rotate:
            rot = kabsch(gather(perm), b)
        if permute:
            perm = hungarian(a @ rot.transpose(-1, -2))
    if rotate:
        rot = kabsch(gather(perm), b)
    aligned = gather(perm) @ rot.transpose(-1, -2)
    cost = (aligned - b).pow(2).sum(dim=(1, 2))
    # guard: the atoms as given, only rotated (Kabsch): never costlier than the pair as given, and,
    # unlike that raw cost, rotation invariant, so whether the guard fires does not depend on the
    # data's orientation
    rot_given = kabsch(a, b) if rotate else eye
    given = (a @ rot_given.transpose(-1, -2) - b).pow(2).sum(dim=(1, 2))
    worse = cost > given
    if worse.any():
        perm = torch.where(worse[:, None], ident, perm)
        rot = torch.where(worse[:, None, None], rot_given, rot)
        cost = torch.where(worse, given, cost)
    return perm, rot, cost


class EquivariantOTCoupling(Coupling):
    """Rotation/permutation-aligned exact minibatch OT for molecules; ``pos`` is the aligned field,
    every other per-atom field of x0 (noisy types, charges) is permuted along with it, every per-pair
    field (noisy bonds, see :func:`pair_fields`) on both axes; ``mask``, ``masks`` and ``cond`` are x1's.

    ``host``: all of it is CPU work (``iters`` Hungarian solves per candidate pair), so the trainer runs it in
    its DataLoader workers, ahead of the step (``trainer.pairing: auto``).

    Args:
        iters: rounds of (Kabsch rotation, Hungarian permutation) per candidate pair.
        permute: optimise the atom order of the noise (Hungarian, within each element).
        rotate: optimise the orientation of the noise (Kabsch).
        batch_ot: re-pair molecules by exact OT on the aligned costs; False: keep the drawn pairs.
        max_group: OT among at most this many same-size molecules at a time (its cost grows as the square).
        pos_field: the state field holding the positions [B, N, 3].
    """

    host = True

    def __init__(self, iters: int = 2, permute: bool = True, rotate: bool = True, batch_ot: bool = True,
                 max_group: int = 64, pos_field: str = "pos") -> None:
        self.iters, self.permute, self.rotate = iters, permute, rotate
        self.batch_ot, self.max_group, self.pos_field = batch_ot, max_group, pos_field
        self.last_cost: float | None = None  # total aligned cost of the last call (for logs/tests)

    def pair(self, x0: State, x1: State) -> tuple[State, State]:
        mask = x1.get("mask")
        pos0, pos1 = x0[self.pos_field], x1[self.pos_field]
        require_finite({self.pos_field: pos0}, {self.pos_field: pos1})  # Kabsch/Hungarian need finite input
        b, n = pos1.shape[:2]
        if mask is None:
            mask = torch.ones(b, n, dtype=torch.bool, device=pos1.device)
        counts = mask.sum(1)
        pairs = pair_fields(x0, x1, n)
        out = {k: v.clone() for k, v in x0.items() if k not in PASSENGERS}
        total = 0.0
        for size in counts.unique().tolist():
            rows = torch.nonzero(counts == size).flatten()
            # padding sits after the real atoms in each row (collate); check, then slice
            sub = mask[rows]
            if not bool(sub[:, :size].all()):
                raise ValueError("equivariant OT expects padding after the real atoms in each molecule")
            for start in range(0, len(rows), self.max_group):
                grp = rows[start : start + self.max_group]
                total += self._pair_group(x0, pos0, pos1, grp, int(size), out, pairs)
        self.last_cost = total
        for k in PASSENGERS:
            if k in x1:
                out[k] = x1[k]
        return out, x1

    def _pair_group(self, x0: State, pos0: Tensor, pos1: Tensor, grp: Tensor, size: int, out: State,
                    pairs: set[str]) -> float:
        g = len(grp)
        a = pos0[grp, :size].double()  # the source is centred already
        bb = pos1[grp, :size].double()
        if self.batch_ot and g > 1:
            ai = a.repeat_interleave(g, 0)  # pair (i, j) at i*g + j
            bj = bb.repeat(g, 1, 1)
            perm, rot, cost = align_pairs(ai, bj, iters=self.iters, permute=self.permute, rotate=self.rotate)
            assign = assignment(cost.reshape(g, g).cpu().numpy())  # data j <- noise assign[j]
            pick = torch.as_tensor(assign, device=a.device) * g + torch.arange(g, device=a.device)
            perm, rot, cost = perm[pick], rot[pick], cost[pick]
            src = torch.as_tensor(assign, device=grp.device)
        else:
            perm, rot, cost = align_pairs(a, bb, iters=self.iters, permute=self.permute, rotate=self.rotate)
            src = torch.arange(g, device=grp.device)
        src_rows = grp[src]
        for k, v in x0.items():
            if k in PASSENGERS:
                continue
            sel = v[src_rows].clone()  # x0 rows re-paired to the data rows grp
            if k in pairs:  # per-pair field: permute rows and columns, B' = P B P^T
                sel[:, :size, :size] = permute_pairs(sel[:, :size, :size], perm.to(v.device))
            elif v.dim() >= 2 and v.shape[1] == pos0.shape[1]:  # per-atom field: permute atoms
                idx = perm.to(v.device)
                idx = idx.reshape(*idx.shape, *([1] * (v.dim() - 2))).expand(-1, -1, *v.shape[2:])
                sel[:, :size] = torch.gather(sel[:, :size], 1, idx)
            if k == self.pos_field:
                sel[:, :size] = (sel[:, :size].double() @ rot.transpose(-1, -2).to(sel.device)).to(v.dtype)
            out[k][grp] = sel
        return float(cost.sum())


def pair_fields(x0: State, x1: State, n: int) -> set[str]:
    """The fields of x0 that are per atom *pair* ([B, N, N, ...]): those whose own mask in ``masks`` (of
    x1, else x0) is [B, N, N], and, with no such mask, integer (class-index) fields [B, N, N]. A float
    [B, N, N] field without a pair mask stays per atom: one-hot types [B, N, K] with K == N look alike."""
    masks = x1.get("masks") or x0.get("masks") or {}
    out = set()
    for k, v in x0.items():
        if k in PASSENGERS or not isinstance(v, Tensor) or v.dim() < 3 or v.shape[1] != n or v.shape[2] != n:
            continue
        own = masks.get(k)
        if own is not None:
            if own.dim() == 3 and own.shape[1] == own.shape[2] == n:
                out.add(k)
        elif not (v.is_floating_point() or v.is_complex()):
            out.add(k)
    return out


def permute_pairs(v: Tensor, perm: Tensor) -> Tensor:
    """``out[p, i, j] = v[p, perm[p, i], perm[p, j]]`` for a pair field ``v`` [P, n, n, ...] and ``perm``
    [P, n]: the atoms of each pair permuted on both axes (B' = P B P^T)."""
    g, s = perm.shape
    rest = (1,) * (v.dim() - 3)
    rows = perm.reshape(g, s, 1, *rest).expand(v.shape)
    cols = perm.reshape(g, 1, s, *rest).expand(v.shape)
    return torch.gather(torch.gather(v, 1, rows), 2, cols)
