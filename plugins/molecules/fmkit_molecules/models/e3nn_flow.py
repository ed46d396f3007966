"""An E(3)-equivariant velocity network on e3nn irreps (tensor-product message passing in the style of
NequIP, Batzner et al. 2022, over each molecule's fully connected graph).

Per layer and edge j -> i: spherical harmonics Y(r_ij) (l <= lmax) and a radial MLP on a Gaussian
embedding of |r_ij| plus the layer-normed invariant scalars of both atoms give the weights of a tensor product
h_j (x) Y(r_ij); messages are averaged over the real neighbours, mixed by an ``o3.Linear`` together
with a self-interaction, and passed through a gated nonlinearity (``e3nn.nn.Gate``), added to the
layer's input and rescaled by 1/sqrt(2) (the scale stays O(1) through the layers). The position
velocity is one ``1o`` vector per atom, made CoM-free (when the recipe's path predicts x1, the output
is x_t plus that vector); the type outputs are ``0e`` scalars.
"""

from __future__ import annotations

from typing import Literal

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from fmkit_molecules.models.common import (
    AtomEmbedding,
    TimeEmbedding,
    atom_spec,
    edge_mask,
    node_mask,
    outputs,
    predicts_x1,
)


class E3nnFlowOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scalars: int = Field(64, ge=1, description="multiplicity of 0e features")
    vectors: int = Field(16, ge=1, description="multiplicity of 1o (and 1e) features")
    lmax: int = Field(2, ge=1, le=3, description="highest degree of the edge spherical harmonics")
    layers: int = Field(4, ge=1)
    num_basis: int = Field(16, ge=2, description="Gaussian radial basis functions")
    r_max: float = Field(10.0, gt=0.0, description="Angstrom spanned by the radial basis (no cutoff)")
    radial_hidden: int = Field(64, ge=1)
    atom_encoding: Literal["categorical", "onehot"] | None = Field(
        None, description="only when no dataset is at hand; otherwise read from data_info")
    num_classes: int | None = Field(None, ge=1, description="only when no dataset is at hand")


class _Layer(nn.Module):
    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, scalars: int, vectors: int,
                 num_basis: int, radial_hidden: int) -> None:
        super().__init__()
        self.irreps_in = irreps_in
        self.gate = Gate(
            f"{scalars}x0e", [torch.nn.functional.silu],
            f"{2 * vectors}x0e", [torch.sigmoid],
            f"{vectors}x1o + {vectors}x1e",
        )
        target = self.gate.irreps_in
        # "uvu" paths: each input channel times each harmonic, into every reachable output irrep type
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in target:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        mid = o3.Irreps(mid)
        mid_sorted, p, _ = mid.sort()
        instructions = [(i1, i2, p[o], mode, w) for i1, i2, o, mode, w in instructions]
        self.tp = o3.TensorProduct(irreps_in, irreps_sh, mid_sorted, instructions,
                                   shared_weights=False, internal_weights=False)
        n_scalar_in = sum(mul for mul, ir in irreps_in if ir.l == 0)
        self.n_scalar_in = n_scalar_in
        # the edge weights depend on the atoms' scalars and the message is their product with h: without
        # a norm each layer squares the scale (x1e8 after 6 layers at init); a LayerNorm of invariant
        # scalars keeps the model equivariant
        self.scalar_norm = nn.LayerNorm(n_scalar_in)
        self.radial = FullyConnectedNet(
            [num_basis + 2 * n_scalar_in, radial_hidden, radial_hidden, self.tp.weight_numel], torch.nn.functional.silu)
        self.lin_msg = o3.Linear(mid_sorted, target)
        self.self_int = o3.Linear(irreps_in, target)
        self.residual = irreps_in == self.gate.irreps_out

    def forward(self, h: Tensor, sh: Tensor, emb: Tensor, emask: Tensor, inv_deg: Tensor) -> Tensor:
        b, n, _ = h.shape
        s = self.scalar_norm(h[..., : self.n_scalar_in])
        edge_in = torch.cat([emb, s[:, :, None, :].expand(b, n, n, -1), s[:, None, :, :].expand(b, n, n, -1)], -1)
        w = self.radial(edge_in)  # [B, N, N, weight_numel]
        hj = h[:, None, :, :].expand(b, n, n, h.shape[-1])
        msg = self.tp(hj.reshape(b * n * n, -1), sh.reshape(b * n * n, -1), w.reshape(b * n * n, -1))
        msg = msg.reshape(b, n, n, -1)
        msg = torch.where(emask[..., None], msg, torch.zeros_like(msg))
        agg = msg.sum(2) * inv_deg[..., None]  # mean over real neighbours
        out = self.gate(self.self_int(h) + self.lin_msg(agg))
        return (h + out) * 2**-0.5 if self.residual else out  # the sum of two unit-scale terms, rescaled


class E3nnFlow(nn.Module):
    """E(3)-equivariant velocity model: ``forward({"pos","atoms","mask"}, t) -> {"pos": [B,N,3], "atoms": [B,N,K]}``.

    Args:
        scalars: multiplicity of the invariant (0e) features.
        vectors: multiplicity of the vector (1o and 1e) features.
        lmax: highest degree of the edge spherical harmonics.
        layers: number of message-passing layers.
        num_basis: Gaussian radial basis functions of a distance.
        r_max: Angstrom spanned by the radial basis (no cutoff).
        radial_hidden: width of the MLP from radial features to tensor-product weights.
        atom_encoding: "categorical" or "onehot", only when no dataset is at hand (else from ``data_info``).
        num_classes: atom classes K, only when no dataset is at hand.
        data_info: the dataset's description (build context): atom encoding and class counts.
        predictions: the path's target per field (build context): ``pos: x1`` makes the model output x1.
    """

    def __init__(self, scalars: int = 64, vectors: int = 16, lmax: int = 2, layers: int = 4, num_basis: int = 16,
                 r_max: float = 10.0, radial_hidden: int = 64, atom_encoding: str | None = None,
                 num_classes: int | None = None, data_info=None, predictions: dict[str, str] | None = None) -> None:
        super().__init__()
        self.encoding, self.num_classes = atom_spec(data_info, atom_encoding, num_classes)
        self.predicts_x1 = predicts_x1(predictions)
        self.num_basis, self.r_max = num_basis, r_max
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        # the module form: its forward holds no Irreps, which torch.compile cannot guard on
        self.sph = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        self.embed = AtomEmbedding(self.encoding, self.num_classes, scalars)
        self.time = TimeEmbedding(scalars)
        irreps = o3.Irreps(f"{scalars}x0e")
        self.layers = nn.ModuleList()
        for _ in range(layers):
            layer = _Layer(irreps, self.irreps_sh, scalars, vectors, num_basis, radial_hidden)
            self.layers.append(layer)
            irreps = layer.gate.irreps_out
        self.head = o3.Linear(irreps, f"1x1o + {self.num_classes}x0e")

    def forward(self, x_t: dict, t: Tensor, cond: Tensor | None = None) -> dict[str, Tensor]:
        pos = x_t["pos"]
        mask = node_mask(x_t, pos)
        b, n, _ = pos.shape
        if t.dim() == 0:
            t = t.expand(b)
        t = t.to(pos.dtype).reshape(b)
        emask = edge_mask(mask)
        rel = pos[:, :, None, :] - pos[:, None, :, :]  # r_ij = x_i - x_j
        rel = torch.where(emask[..., None], rel, torch.zeros_like(rel))
        dist = rel.norm(dim=-1)
        sh = self.sph(rel)
        emb = soft_one_hot_linspace(dist, 0.0, self.r_max, self.num_basis, basis="gaussian", cutoff=False)
        emb = emb * self.num_basis**0.5
        inv_deg = 1.0 / emask.sum(-1).clamp_min(1).to(pos.dtype)
        h = self.embed(x_t["atoms"]) + self.time(t)[:, None, :]
        h = h * mask[..., None].to(h.dtype)
        for layer in self.layers:
            h = layer(h, sh, emb, emask, inv_deg)
            h = h * mask[..., None].to(h.dtype)
        out = self.head(h)
        vec = out[..., :3]
        return outputs(pos * mask[..., None].to(pos.dtype) + vec if self.predicts_x1 else vec, out[..., 3:], mask)
