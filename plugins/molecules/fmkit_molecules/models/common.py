"""Pieces shared by the molecule velocity models: input embeddings, masks, CoM-free outputs."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from fmkit_molecules.geometry import remove_mean


def atom_spec(data_info, atom_encoding: str | None, num_classes: int | None) -> tuple[str, int]:
    """(encoding, K) from the dataset's ``DataInfo`` (``atoms`` categorical -> indices, else one-hot)."""
    if data_info is not None and "atoms" in data_info.fields:
        f = data_info.fields["atoms"]
        if f.num_classes is not None:
            return "categorical", int(f.num_classes)
        return "onehot", int(f.shape[-1])
    return (atom_encoding or "categorical"), int(num_classes or 5)


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t in [0, 1] (Vaswani et al. 2017) followed by an MLP: [B] -> [B, dim]."""

    def __init__(self, dim: int, freq_dim: int = 32) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
        arg = 1000.0 * t[:, None] * freqs[None, :]
        return self.mlp(torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1))


class AtomEmbedding(nn.Module):
    """Atom types -> [B, N, dim]: K + 1 embeddings for indices (index K is the mask token of a masked
    discrete path), or a linear map of one-hot / continuous type vectors [B, N, K]."""

    def __init__(self, encoding: str, num_classes: int, dim: int) -> None:
        super().__init__()
        self.encoding, self.num_classes = encoding, num_classes
        if encoding == "categorical":
            self.emb = nn.Embedding(num_classes + 1, dim)
        else:
            self.emb = nn.Linear(num_classes, dim)

    def forward(self, atoms: Tensor) -> Tensor:
        if self.encoding == "categorical":
            if atoms.is_floating_point():
                raise TypeError("this model was built for class-index atoms (long [B,N]); got float atoms")
            return self.emb(atoms.long().clamp(0, self.num_classes))
        if not atoms.is_floating_point():
            raise TypeError("this model was built for one-hot atoms (float [B,N,K]); got class indices")
        return self.emb(atoms)


def node_mask(x_t: dict, pos: Tensor) -> Tensor:
    """The state's mask [B, N] bool, or all True."""
    m = x_t.get("mask")
    if m is None:
        return torch.ones(pos.shape[:2], dtype=torch.bool, device=pos.device)
    return m.to(torch.bool)


def edge_mask(mask: Tensor) -> Tensor:
    """[B, N, N]: both atoms real and i != j."""
    n = mask.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    return mask[:, :, None] & mask[:, None, :] & ~eye


def predicts_x1(predictions: dict[str, str] | None) -> bool:
    """Whether the recipe's path trains ``pos`` to the endpoint x1 (the ``predictions`` context)
    rather than to the velocity."""
    return (predictions or {}).get("pos", "velocity") == "x1"


def outputs(vel: Tensor, types_out: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """CoM-free position output (a velocity, or the x1 estimate) and masked type outputs."""
    m = mask.unsqueeze(-1).to(vel.dtype)
    return {"pos": remove_mean(vel, mask), "atoms": types_out * m}
