"""Model calls split into slices of the batch: the same field, evaluated a few examples at a time.

Sampling integrates a whole chunk (``eval.chunk_size`` samples, one random stream) at once, but on a CPU one
network call on hundreds of images makes activations of tens of megabytes, each a fresh ``mmap`` that the
kernel faults in and zeroes page by page and unmaps again when it is freed (glibc maps every block above
32 MiB: :mod:`fmkit.engine.host_memory`). Slices of a few dozen examples keep each call's activations in the
allocator's heap: measured on 200 guided MNIST images in one chunk (bench/results/sample_route.md), 3.86
images/s with 64 KiB of input per call, 3.83 with 256 KiB, 3.08 in one call (12.8 s of it in the kernel).
The chunk, its noise and its solver steps stay as they were, so the samples are those of one call up to the
last bits that a kernel's batch blocking may change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from fmkit.flow.state import State

#: input bytes of one CPU model call (:func:`examples_per_call`): the MNIST U-Net's 3 KiB images give 20
#: examples a call (40 under guidance), activations of a few MB, as the bench's loop makes
CPU_CALL_BYTES = 64 * 1024


def examples_per_call(template: State, budget: int | None = None) -> int:
    """How many examples of ``template`` (a batch [B, ...]) one model call takes: those whose input
    (every tensor of the batch, per example, cond and masks included) fits ``budget`` bytes (None:
    :data:`CPU_CALL_BYTES`), at least 1."""
    budget = CPU_CALL_BYTES if budget is None else budget
    per_example = 0
    for v in _tensors(template):
        if v.dim() >= 1 and v.shape[0]:
            per_example += v[0].numel() * v.element_size()
    return max(1, budget // max(per_example, 1))


def _tensors(x: Any) -> list[Tensor]:
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, Mapping):
        return [t for v in x.values() for t in _tensors(v)]
    return []


def cpu_call_size(template: State, device: torch.device | str) -> int | None:
    """The slice :func:`generate <fmkit.flow.sampling.generate>` calls the model on: :func:`examples_per_call` on
    a CPU, None (the whole batch at once) elsewhere, where one call on a large batch is what is fast."""
    return examples_per_call(template) if torch.device(device).type == "cpu" else None


def call_in_slices(model: nn.Module, size: int | None, x_t: State, t: Tensor, cond: Tensor | None = None,
                   **kw: Any) -> Any:
    """``model(x_t, t, cond, **kw)`` on slices of at most ``size`` examples, joined (``size`` None: one call).

    Every tensor argument whose first dimension is the batch (the fields, masks, per-field masks, ``t``,
    ``cond``, a second time ``r``) is sliced alike; the outputs (a state, or a tensor) are concatenated.
    A batch of at most ``size`` goes through in one call, untouched.
    """
    if size is not None and size < 1:
        raise ValueError(f"a slice of the batch holds at least one example, got size {size}")
    b = t.shape[0]
    if size is None or b <= size:
        return model(x_t, t, cond, **kw)
    return _join([model(*_slice((x_t, t, cond), b, i, i + size), **_slice(kw, b, i, i + size))
                  for i in range(0, b, size)])


def _slice(x: Any, b: int, i: int, j: int) -> Any:
    """``x`` with every tensor of batch ``b`` cut to examples ``i:j`` (mappings and tuples entry by entry)."""
    if isinstance(x, Tensor):
        return x[i:j] if x.dim() >= 1 and x.shape[0] == b else x
    if isinstance(x, Mapping):
        return {k: _slice(v, b, i, j) for k, v in x.items()}
    if isinstance(x, tuple):
        return tuple(_slice(v, b, i, j) for v in x)
    return x


def _join(outs: list[Any]) -> Any:
    """The slices' outputs joined along the batch (a state entry by entry)."""
    if isinstance(outs[0], Mapping):
        return {k: _join([o[k] for o in outs]) for k in outs[0]}
    return torch.cat(outs)
