"""The optimizer side of a fit: AdamW with its learning-rate schedule, and the EMA of the weights."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from fmkit.engine.options import TrainerOptions


class EMA:
    """Exponential moving average of a model's parameters (buffers copied), updated in place.

    The effective decay warms up as min(decay, (1 + n) / (10 + n)) after n updates, so short runs
    are not dominated by their random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._src = [p for p in model.parameters()]
        self._dst = [p for p in self.model.parameters()]
        self._src_buf = list(model.buffers())
        self._dst_buf = list(self.model.buffers())

    @torch.no_grad()
    def update(self) -> None:
        self.num_updates += 1
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        torch._foreach_lerp_(self._dst, self._src, 1.0 - d)
        for d, s in zip(self._dst_buf, self._src_buf):
            d.copy_(s)


def lr_factor(step: int, opts: TrainerOptions) -> float:
    """Linear warmup to 1, then cosine to ``min_lr_ratio`` (or constant)."""
    if opts.warmup_steps and step < opts.warmup_steps:
        return (step + 1) / opts.warmup_steps
    if opts.schedule == "constant":
        return 1.0
    span = max(1, opts.steps - opts.warmup_steps)
    prog = min(1.0, (step - opts.warmup_steps) / span)
    return opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog))



def build_optimizer(model: nn.Module, opts: TrainerOptions, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters; the fused kernel (same update, one kernel instead of ~10 ops
    per tensor) on CUDA and CPU when every parameter is floating point."""
    params = list(model.parameters())
    fused = device.type in ("cuda", "cpu") and all(p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=opts.lr, betas=opts.betas, weight_decay=opts.weight_decay,
                             fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, step: int, opts: TrainerOptions) -> None:
    """The learning rate of ``step``: ``opts.lr`` times :func:`lr_factor`."""
    for g in optimizer.param_groups:
        g["lr"] = opts.lr * lr_factor(step, opts)


def match_param_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded optimizer moment its parameter's strides. ``load_state_dict`` keeps the
    checkpoint's (contiguous) layout, and the fused AdamW kernel pairs elements by memory order: for a
    channels-last weight it silently mixed up the moments (test_channels_last.py: resume then diverged)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p, {})
            for k, v in st.items():
                if isinstance(v, Tensor) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)

