"""Bits per dimension of 8-bit images under a flow, with uniform dequantisation.

An image u in {0..255}^D is dequantised as y = (u + U) / 256, U ~ U[0,1)^D, and scaled to
x = 2y - 1 in [-1, 1]; then log P(u) >= E_U[log p_x(x)] - D log 128 (Jensen; the Jacobian of
u -> x is (2/256)^D), so bits/dim = (-log p_x(x) + D ln 128) / (D ln 2) = -log p_x / (D ln 2) + 7,
averaged over ``draws`` dequantisation noises (Theis et al. 2016; FM-OT CIFAR-10: 3.11 with one
draw, 2.99 with 50, Lipman et al. 2023, table 4). log p_x comes from the core's ``log_likelihood``
(:mod:`fmkit.plugin`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from fmkit.plugin import log_likelihood
from torch import Tensor

OFFSET_PER_DIM = math.log(128.0)
"""nats per dimension added by the dequantisation (u -> x in [-1, 1] has Jacobian 2/256 per dim)."""


@dataclass
class BPDResult:
    bits_per_dim: float          # mean over images of the mean over draws
    per_image: Tensor            # [N]
    draws: int
    nfe: int                     # function evaluations of one solve (the last draw)
    estimator: str


def dequantize(u8: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """uint8 [N, ...] -> x = 2 (u + U) / 256 - 1 in [-1, 1)."""
    noise = torch.rand(u8.shape, generator=generator)
    return 2.0 * (u8.float() + noise) / 256.0 - 1.0


def bits_per_dim(velocity: Callable, u8: Tensor, source, solver, *, cond: Tensor | None = None, draws: int = 1,
                 estimator: str = "hutchinson", batch_size: int = 100, seed: int = 0,
                 device: torch.device | str = "cpu") -> BPDResult:
    """Dequantised bits/dim of uint8 images [N, C, H, W] under ``velocity(state, t) -> state``.

    Args:
        velocity: the model's field ``velocity(x, t)``, x a state {"x": [B, C, H, W]}, t a scalar.
        u8: the images, uint8 [N, C, H, W].
        source: the flow's source p_0, with a closed-form ``log_prob``.
        solver: integrates the field and the divergence from t = 1 back to 0.
        cond: class labels [N] riding with the images (a class-conditional model: log p(x | c)); None: none.
        draws: dequantisation noises averaged per image.
        estimator: the divergence estimator, ``exact``, ``hutchinson`` or ``auto``.
        batch_size: images per solve.
        seed: seeds the dequantisation noise.
        device: where the solves run (the results come back on the CPU).

    Returns:
        The mean bits/dim, each image's [N] (float64), the draws, the NFE of one solve and the estimator.
    """
    g = torch.Generator().manual_seed(seed)
    dims = u8[0].numel()
    out = torch.zeros(len(u8), dtype=torch.float64)
    nfe = 0
    for _ in range(draws):
        x = dequantize(u8, g)
        for i in range(0, len(x), batch_size):
            st = {"x": x[i:i + batch_size].to(device)}
            if cond is not None:
                st["cond"] = cond[i:i + batch_size].to(device)
            res = log_likelihood(velocity, st, source, solver, estimator=estimator,
                                       dequantization_offset=dims * OFFSET_PER_DIM)
            out[i:i + batch_size] += res.bits_per_dim.double().cpu()
            nfe = res.nfe
    per = out / draws
    return BPDResult(float(per.mean()), per, draws, nfe, estimator)
