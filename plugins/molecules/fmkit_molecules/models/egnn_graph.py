"""EGNN with edge channels: positions, atom types, formal charges and the bond graph generated together
(Satorras et al. 2021, "E(n) Equivariant Graph Neural Networks", with EDM's normalised coordinate
differences; edge features read and written in every layer as in Irwin et al. 2024, SemlaFlow, and
Dunn & Koes 2024, FlowMol).

Inputs, dense over each molecule's fully connected graph: node features h_i from embeddings of the
atom type, the charge class (K + 1 values each: index K is the mask token of a masked discrete path)
and the time; edge features e_ij from an embedding of the bond class (5 values: 4 + mask token) of
the *upper triangle mirrored* (a sampler's lower triangle is garbage); Gaussian RBF features of the
current distances |x_i - x_j| and of the distances at the network's input. Per layer:

    m_ij = phi_m(h_i, h_j, e_ij, rbf(d_ij), rbf(d0_ij))          (used on real pairs i != j only)
    h_i  = LN(h_i + phi_h(h_i, mean_j sigmoid(w . m_ij) m_ij))
    e_ij = LN(e_ij + W m_ij + W m_ji)                            (stays symmetric)
    x_i += mean_j (x_i - x_j) / (|x_i - x_j| + 1) * tanh(w_x . m_ij) * coords_range / layers

Self-conditioning (``self_condition: true``; Chen et al. 2022, as SemlaFlow and FlowMol3 use it): the
model also reads its previous estimate of the molecule, ``self_cond`` = {pos: x1^ [B,N,3], atoms / charges:
class probabilities [B,N,K], bonds: [B,N,N,4]}, through invariant features only: the atoms' class
probabilities and rbf(|x1^_i - x_i|) into h_i, the bond probabilities and rbf(|x1^_i - x1^_j|) into e_ij
(so E(3) equivariance holds with x1^ moving with x). ``self_cond=None`` reads zeros through the same layers.

Outputs: ``pos`` [B,N,3] the CoM-free displacement x_L - x_0 (a velocity) or x_L itself when the
recipe's path predicts x1; ``atoms`` [B,N,K] and ``charges`` [B,N,C] logits from h; ``bonds``
[B,N,N,4] logits from the final edge features, the final h_i + h_j and rbf(d_L), symmetrised
((L + L^T) / 2). Padding atoms and pairs are masked at every step, so they never reach real outputs;
their outputs are zero.
"""

from __future__ import annotations

from typing import Literal

import torch
from fmkit.plugin import ModelError
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from fmkit_molecules.geometry import remove_mean
from fmkit_molecules.graph import BOND_TYPES, CHARGES, symmetric_from_upper
from fmkit_molecules.models.common import (
    AtomEmbedding,
    TimeEmbedding,
    atom_spec,
    edge_mask,
    node_mask,
    predicts_x1,
)


class EGNNGraphOptions(BaseModel):
    """Defaults: the size for a CPU run (378k parameters with QM9's classes; its step time is in
    docs/molecules.md). The pair work grows with message * N^2 per layer, so ``message`` and ``edge``
    set the cost of a step."""

    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(128, ge=1, description="node feature width")
    message: int | None = Field(64, ge=1, description="width of the pair messages m_ij (None: hidden); "
                                                       "with the edge width it sets the cost per step")
    edge: int = Field(16, ge=1, description="edge (bond) feature width")
    layers: int = Field(5, ge=1)
    rbf: int = Field(16, ge=2, description="Gaussian radial basis functions of a distance")
    rbf_max: float = Field(8.0, gt=0.0, description="Angstrom spanned by the radial basis centres (no cutoff)")
    coords_range: float = Field(15.0, gt=0.0, description="bound of all layers' coordinate steps together (Angstrom)")
    atom_encoding: Literal["categorical", "onehot"] | None = Field(
        None, description="only when no dataset is at hand; otherwise read from data_info")
    num_classes: int | None = Field(None, ge=1, description="atom classes, only when no dataset is at hand")
    self_condition: bool = Field(False, description="also read the previous x1 estimate (self_cond); train with "
                                 "objective.self_condition > 0 (SemlaFlow's 0.5)")


def class_count(data_info, field: str, default: int) -> int:
    """K of a categorical field from the dataset's ``DataInfo``, else the graph vocabulary's size."""
    if data_info is None or field not in data_info.fields:
        return default
    f = data_info.fields[field]
    if f.num_classes is None:
        raise ModelError(f"egnn_graph reads '{field}' as class indices, but the dataset describes it as "
                         f"continuous (shape {f.shape})", where="model egnn_graph",
                         fix=f"put '{field}' on the discrete path (`path.fields.{field}: {{name: discrete}}`)")
    return int(f.num_classes)


class RBF(nn.Module):
    """Gaussian radial basis of a distance [...] -> [..., num] (centres evenly over [0, r_max], width
    their spacing; SchNet, Schuett et al. 2017)."""

    def __init__(self, num: int, r_max: float) -> None:
        super().__init__()
        self.register_buffer("centres", torch.linspace(0.0, r_max, num), persistent=False)
        self.gamma = 1.0 / (r_max / (num - 1)) ** 2

    def forward(self, d: Tensor) -> Tensor:
        return torch.exp(-self.gamma * (d[..., None] - self.centres.to(d.dtype)).pow(2))


def pair_geometry(x: Tensor) -> tuple[Tensor, Tensor]:
    """(x_i - x_j [B,N,N,3], |x_i - x_j| [B,N,N]); the distance is smoothed at 0 (finite gradient)."""
    diff = x[:, :, None, :] - x[:, None, :, :]
    return diff, torch.sqrt(diff.pow(2).sum(-1) + 1e-8)


class _GraphLayer(nn.Module):
    def __init__(self, hidden: int, message: int, edge: int, rbf: int, step: float) -> None:
        super().__init__()
        act = nn.SiLU()
        # phi_m's first layer on the concatenation (h_i, h_j, e_ij, rbf, rbf0), split so that the node
        # parts are computed per atom [B,N,M] and broadcast, never materialised per pair
        self.msg_i = nn.Linear(hidden, message)
        self.msg_j = nn.Linear(hidden, message, bias=False)
        self.msg_e = nn.Linear(edge + 2 * rbf, message, bias=False)
        # one hidden SiLU: on the CPU a SiLU over [B,N,N,M] (forward + backward) costs half an M x M matmul
        self.msg_out = nn.Sequential(act, nn.Linear(message, message))
        # the three maps of m_ij in one matmul: edge update [E], attention gate [1], coordinate step [1]
        self.pair_out = nn.Linear(message, edge + 2)
        with torch.no_grad():  # coordinate steps start near zero (EDM's init of EGNN's phi_x)
            nn.init.xavier_uniform_(self.pair_out.weight[edge + 1 :], gain=0.001)
            self.pair_out.bias[edge + 1 :].zero_()
        self.phi_h = nn.Sequential(nn.Linear(hidden + message, hidden), act, nn.Linear(hidden, hidden))
        self.norm_h = nn.LayerNorm(hidden)
        self.norm_e = nn.LayerNorm(edge)
        self.edge = edge
        self.step = step

    def forward(self, h: Tensor, e: Tensor, x: Tensor, rbf_fn: RBF, rbf0: Tensor, em: Tensor,
                inv_deg: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        diff, d = pair_geometry(x)
        node = self.msg_i(h)[:, :, None, :] + self.msg_j(h)[:, None, :, :]
        m = self.msg_out(self.msg_e(torch.cat([e, rbf_fn(d), rbf0], -1)) + node)  # [B,N,N,M]
        out = self.pair_out(m)
        de, gate, coord = out[..., : self.edge], out[..., self.edge : self.edge + 1], out[..., self.edge + 1 :]
        # padding pairs and the diagonal are cut by `em` ([B,N,N,1]) in every use of m
        agg = (m * (torch.sigmoid(gate) * em)).sum(2) * inv_deg[..., None]
        h = self.norm_h(h + self.phi_h(torch.cat([h, agg], -1)))
        e = self.norm_e(e + de + de.transpose(1, 2)) * em  # symmetric in (i, j)
        unit = diff / (d[..., None] + 1.0)
        x = x + (unit * (torch.tanh(coord) * em)).sum(2) * (inv_deg[..., None] * self.step)
        return h, e, x


class EGNNGraph(nn.Module):
    """E(3)- and permutation-equivariant EGNN with edge channels:
    ``forward({"pos","atoms","charges","bonds","mask"}, t) -> {"pos","atoms","charges","bonds"}`` (module doc).

    Args:
        hidden: node feature width.
        message: width of the pair messages m_ij (None: ``hidden``); with ``edge`` it sets a step's cost.
        edge: edge (bond) feature width.
        layers: number of message-passing layers.
        rbf: Gaussian radial basis functions of a distance.
        rbf_max: Angstrom spanned by the radial basis centres (no cutoff).
        coords_range: bound of all layers' coordinate steps together (Angstrom).
        atom_encoding: "categorical" or "onehot", only when no dataset is at hand (else from ``data_info``).
        num_classes: atom classes K, only when no dataset is at hand.
        data_info: the dataset's description (build context): atom encoding and class counts.
        predictions: the path's target per field (build context): ``pos: x1`` makes the model output x1.
        self_condition: also read ``self_cond``, the previous x1 estimate (module doc).
    """

    def __init__(self, hidden: int = 128, message: int | None = 64, edge: int = 16, layers: int = 5,
                 rbf: int = 16, rbf_max: float = 8.0, coords_range: float = 15.0,
                 atom_encoding: str | None = None, num_classes: int | None = None, data_info=None,
                 predictions: dict[str, str] | None = None, self_condition: bool = False) -> None:
        super().__init__()
        message = message or hidden
        self.encoding, self.num_classes = atom_spec(data_info, atom_encoding, num_classes)
        self.num_charges = class_count(data_info, "charges", len(CHARGES))
        self.num_bonds = class_count(data_info, "bonds", len(BOND_TYPES))
        self.predicts_x1 = predicts_x1(predictions)
        self.embed_atoms = AtomEmbedding(self.encoding, self.num_classes, hidden)
        self.embed_charges = nn.Embedding(self.num_charges + 1, hidden)  # + mask token
        self.embed_bonds = nn.Embedding(self.num_bonds + 1, edge)  # + mask token
        self.time = TimeEmbedding(hidden)
        self.rbf = RBF(rbf, rbf_max)
        self.layers = nn.ModuleList(_GraphLayer(hidden, message, edge, rbf, coords_range / layers)
                                    for _ in range(layers))
        act = nn.SiLU()
        self.node_head = nn.Sequential(nn.Linear(hidden, hidden), act,
                                       nn.Linear(hidden, self.num_classes + self.num_charges))
        self.bond_h = nn.Linear(hidden, 2 * edge)
        self.bond_e = nn.Linear(edge + rbf, 2 * edge, bias=False)
        self.bond_out = nn.Sequential(act, nn.Linear(2 * edge, 2 * edge), act, nn.Linear(2 * edge, self.num_bonds))
        self.self_conditioned = bool(self_condition)
        if self_condition:  # the previous estimate's invariant features (module doc)
            self.sc_node = nn.Linear(self.num_classes + self.num_charges + rbf, hidden)
            self.sc_edge = nn.Linear(self.num_bonds + rbf, edge)

    def _categorical(self, x_t: dict, name: str) -> Tensor:
        v = x_t.get(name)
        if v is None:
            raise ModelError(f"model egnn_graph generates the molecular graph and needs the state field "
                             f"'{name}', which this dataset does not provide", where="model egnn_graph",
                             fix="set the dataset option `bonds: true` (qm9 / xyz_molecules), or use the "
                                 "`egnn` model for positions and atom types only")
        if v.is_floating_point():
            raise ModelError(f"model egnn_graph reads '{name}' as class indices (long); got {v.dtype}",
                             where="model egnn_graph", fix=f"put '{name}' on the discrete path")
        return v

    def _self_cond(self, sc: dict | None, x: Tensor, em: Tensor) -> tuple[Tensor, Tensor]:
        """Node [B,N,H] and edge [B,N,N,E] terms of the previous estimate ``sc`` (zeros in: the layers' biases)."""
        b, n = x.shape[:2]
        if sc is None:
            node = x.new_zeros(b, n, self.sc_node.in_features)
            edge = x.new_zeros(b, n, n, self.sc_edge.in_features)
        else:
            pos = sc["pos"].to(x.dtype)
            shift = torch.sqrt((pos - x).pow(2).sum(-1) + 1e-8)
            node = torch.cat([sc["atoms"].to(x.dtype), sc["charges"].to(x.dtype), self.rbf(shift)], -1)
            edge = torch.cat([sc["bonds"].to(x.dtype), self.rbf(pair_geometry(pos)[1])], -1)
        return self.sc_node(node), self.sc_edge(edge) * em

    def forward(self, x_t: dict, t: Tensor, cond: Tensor | None = None, *,
                self_cond: dict | None = None) -> dict[str, Tensor]:
        pos = x_t["pos"]
        charges = self._categorical(x_t, "charges")
        bonds = self._categorical(x_t, "bonds")
        mask = node_mask(x_t, pos)
        b = pos.shape[0]
        t = (t.expand(b) if t.dim() == 0 else t).to(pos.dtype).reshape(b)
        em_b = edge_mask(mask)
        em = em_b[..., None].to(pos.dtype)
        inv_deg = 1.0 / em_b.sum(-1).clamp_min(1).to(pos.dtype)
        m = mask[..., None].to(pos.dtype)
        x = pos * m
        rbf0 = self.rbf(pair_geometry(x)[1])
        h = self.embed_atoms(x_t["atoms"]) + self.embed_charges(charges.long().clamp(0, self.num_charges))
        h = (h + self.time(t)[:, None, :]) * m
        bonds = symmetric_from_upper(bonds.long().clamp(0, self.num_bonds))  # read the upper triangle only
        e = self.embed_bonds(bonds) * em
        if self.self_conditioned:
            sc_h, sc_e = self._self_cond(self_cond, x, em)
            h, e = h + sc_h * m, e + sc_e
        elif self_cond is not None:
            raise ModelError("this egnn_graph was built without self-conditioning and was handed self_cond",
                             where="model.self_condition", fix="set `self_condition: true` in the model section")
        for layer in self.layers:
            h, e, x = layer(h, e, x, self.rbf, rbf0, em, inv_deg)
            h, x = h * m, x * m
        node = self.node_head(h) * m
        hb = self.bond_h(h)
        pre = hb[:, :, None, :] + hb[:, None, :, :] + self.bond_e(torch.cat([e, self.rbf(pair_geometry(x)[1])], -1))
        logits = self.bond_out(pre)
        logits = 0.5 * (logits + logits.transpose(1, 2)) * em
        vel = x if self.predicts_x1 else x - pos * m
        return {"pos": remove_mean(vel, mask), "atoms": node[..., : self.num_classes],
                "charges": node[..., self.num_classes :], "bonds": logits}
