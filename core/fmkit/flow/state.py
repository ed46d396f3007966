"""States: the data that flows through fmkit.

A *state* is a mapping of named tensor fields that share a leading batch dimension, e.g. an image
``{"x": [B,C,H,W]}`` or a molecule ``{"pos": [B,N,3], "atoms": [B,N], "mask": [B,N]}``. Two keys
are reserved and never flow along a path:

- ``"mask"``: padding mask (bool, True = real). It is broadcast against each field by appending
  trailing singleton dimensions, so ``[B,N]`` masks ``[B,N,3]`` and ``[B,1,T]`` masks ``[B,M,T]``.
- ``"masks"``: per-field masks ``{field: bool tensor}`` for fields whose mask is not ``mask``, e.g.
  a molecule's per-pair bond field ``[B,N,N]`` masked by its real pairs ``[B,N,N]`` (the atom mask
  would broadcast along one axis only). A field listed here uses its own mask everywhere a mask
  applies (losses, sources, couplings' costs); the others use ``mask``.
- ``"cond"``: conditioning (class label, property) that travels beside the state.
- ``"x0"``: a stored source sample paired with this example (a state of the same fields), as a
  pairs dataset serves it for reflow and distillation; the ``given`` coupling takes x0 from here.

Floating-point fields are continuous; integer fields are categorical (class indices). A plain tensor
is accepted wherever a single field is meant and is treated as ``{"x": tensor}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Union

import torch
from torch import Tensor

from fmkit.errors import ContractError

MASK = "mask"
MASKS = "masks"  # per-field masks {field: mask}
COND = "cond"
X0 = "x0"  # a stored source sample riding with the data (fmkit.app.builtin.pairs); never a flowing field
RESERVED = frozenset({MASK, MASKS, COND, X0})
#: the keys that ride beside the fields, unchanged, from the data to x0, x_t and the samples
PASSENGERS = (MASK, MASKS, COND)
DEFAULT_FIELD = "x"

State = dict[str, Tensor]
StateLike = Union[Tensor, Mapping[str, Tensor]]


def as_state(x: StateLike) -> tuple[State, bool]:
    """Return ``(state_dict, was_tensor)``; a bare tensor becomes ``{"x": tensor}``."""
    if isinstance(x, Tensor):
        return {DEFAULT_FIELD: x}, True
    if isinstance(x, Mapping):
        return dict(x), False
    raise TypeError(f"expected a Tensor or a mapping of field name -> Tensor, got {type(x).__name__}")


def unwrap(state: State, was_tensor: bool) -> StateLike:
    """Inverse of :func:`as_state`."""
    return state[DEFAULT_FIELD] if was_tensor else state


def fields(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The flowing fields of a state (everything but ``mask`` and ``cond``)."""
    return {k: v for k, v in state.items() if k not in RESERVED}


def field_mask(state: Mapping[str, Any], name: str) -> Tensor | None:
    """The mask of field ``name``: its own from ``state["masks"]`` when given, else ``state["mask"]``."""
    own = state.get(MASKS)
    if isinstance(own, Mapping) and name in own:
        return own[name]
    return state.get(MASK)


def passengers(state: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``state`` that ride beside its fields (``mask``, ``masks``, ``cond``)."""
    return {k: state[k] for k in PASSENGERS if k in state}


def flat_tensors(state: Mapping[str, Any]) -> dict[str, Tensor]:
    """A state as one flat ``{name: contiguous tensor}`` (what a safetensors file holds): a nested
    mapping's entries are named ``key.entry`` (``masks.bonds``, ``cond.label``); :func:`nest_tensors`
    inverts it."""
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if isinstance(v, Mapping):
            out.update({f"{k}.{kk}": vv.contiguous() for kk, vv in v.items()})
        elif isinstance(v, Tensor):
            out[k] = v.contiguous()
    return out


def nest_tensors(flat: Mapping[str, Tensor]) -> State:
    """Inverse of :func:`flat_tensors`."""
    out: dict[str, Any] = {}
    for k, v in flat.items():
        head, dot, tail = k.partition(".")
        if dot:
            out.setdefault(head, {})[tail] = v
        else:
            out[k] = v
    return out


def is_categorical(t: Tensor) -> bool:
    """Integer tensors hold class indices and follow a discrete path."""
    return not (t.is_floating_point() or t.is_complex())


def index(state: Mapping[str, Tensor], idx: Tensor) -> State:
    """Select batch rows ``idx`` of every tensor in the state (cond and mask included)."""
    out: State = {}
    for k, v in state.items():
        if isinstance(v, Tensor):
            out[k] = v[idx]
        elif isinstance(v, Mapping):
            out[k] = {kk: vv[idx] for kk, vv in v.items()}  # type: ignore[assignment]
        else:
            out[k] = v
    return out


def to_device(state: Mapping[str, Tensor], device: torch.device | str, non_blocking: bool = False) -> State:
    out: State = {}
    for k, v in state.items():
        if isinstance(v, Tensor):
            out[k] = v.to(device, non_blocking=non_blocking)
        elif isinstance(v, Mapping):
            out[k] = {kk: vv.to(device, non_blocking=non_blocking) for kk, vv in v.items()}  # type: ignore[assignment]
        else:
            out[k] = v
    return out


def to_channels_last(state: Mapping[str, Tensor]) -> State:
    """The same state with its 4-D floating fields ([B, C, H, W] images) in channels-last memory
    order: same values and shape, NHWC strides (what NHWC convolution kernels read without a copy)."""
    return {k: v.contiguous(memory_format=torch.channels_last)
            if isinstance(v, Tensor) and v.dim() == 4 and v.is_floating_point() else v for k, v in state.items()}


def pin(item: Any) -> Any:
    """``item`` (a state, or a tuple/list of states) in page-locked host memory, for asynchronous
    copies to a GPU."""
    if isinstance(item, (tuple, list)):
        return type(item)(pin(v) for v in item)
    if isinstance(item, Tensor):
        return item.pin_memory()
    if isinstance(item, Mapping):
        return {k: pin(v) for k, v in item.items()}
    return item


def broadcast_mask(mask: Tensor | None, like: Tensor) -> Tensor | None:
    """Mask ``[B, ...]`` reshaped by appending singleton dims so it broadcasts against ``like``."""
    if mask is None:
        return None
    m = mask
    while m.dim() < like.dim():
        m = m.unsqueeze(-1)
    return m.to(dtype=torch.bool)


def masked_mean_per_example(err: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``err`` over all non-batch elements that the mask keeps; shape ``[B]``."""
    b = err.shape[0]
    if mask is None:
        return err.reshape(b, -1).mean(dim=1)
    m = broadcast_mask(mask, err).expand_as(err).to(err.dtype)
    num = (err * m).reshape(b, -1).sum(dim=1)
    den = m.reshape(b, -1).sum(dim=1).clamp_min(1.0)
    return num / den


def count_dims(like: Tensor, mask: Tensor | None) -> Tensor:
    """Number of real scalar dimensions per example, ``[B]`` (used for bits/dim and densities)."""
    b = like.shape[0]
    if mask is None:
        return torch.full((b,), like[0].numel(), dtype=torch.float64, device=like.device)
    m = broadcast_mask(mask, like).expand_as(like)
    return m.reshape(b, -1).sum(dim=1).to(torch.float64)


def apply_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """Zero the padded entries of ``x``."""
    if mask is None:
        return x
    return x * broadcast_mask(mask, x).to(x.dtype)


def check_same_fields(out: object, like: Mapping[str, Tensor], what: str) -> None:
    """Fail with a ContractError unless ``out`` is a state with every field of ``like``, each of the
    same shape: what a source sample or a coupling's re-pairing must be (shapes only, no sync)."""
    if not isinstance(out, Mapping):
        raise ContractError(f"{what} returned a {type(out).__name__}, not a state (dict of fields)", where=what,
                            fix="return {field: tensor} with the fields and shapes of the data")
    for k, v in fields(like).items():
        got = out.get(k)
        if not isinstance(got, Tensor) or tuple(got.shape) != tuple(v.shape):
            shape = tuple(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise ContractError(f"{what} returned field {k!r} of shape {shape}; the data's is {tuple(v.shape)}",
                                where=what, fix="return one value per element of each data field (batch first)")
