"""Source distributions p_0, per field, with sampling and log-density.

A source samples a tensor shaped like a data field (respecting its padding mask) and returns the
log-density of a batch, ``[B]``, over the real entries only. :class:`StateSource` composes per-field
sources into the source of a whole state.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch
from torch import Tensor

from fmkit.flow.state import (
    State,
    apply_mask,
    broadcast_mask,
    check_same_fields,
    count_dims,
    field_mask,
    fields,
    passengers,
)


class Source(ABC):
    """p_0 for one field."""

    @abstractmethod
    def sample(self, like: Tensor, mask: Tensor | None = None) -> Tensor:
        """A sample shaped like ``like`` (zero at padded entries)."""

    def log_prob(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """log p_0(x) per example, [B]."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form log-density")


class GaussianSource(Source):
    """N(0, std^2 I) over the real entries of a field."""

    def __init__(self, std: float = 1.0) -> None:
        self.std = float(std)

    def sample(self, like: Tensor, mask: Tensor | None = None) -> Tensor:
        dtype = like.dtype if like.is_floating_point() else torch.float32
        return apply_mask(torch.randn(like.shape, device=like.device, dtype=dtype) * self.std, mask)

    def log_prob(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b = x.shape[0]
        sq = apply_mask(x, mask).reshape(b, -1).pow(2).sum(1)
        d = count_dims(x, mask).to(x.dtype)
        return -0.5 * sq / self.std**2 - d * (math.log(self.std) + 0.5 * math.log(2 * math.pi))


class CategoricalSource(Source):
    """Class indices: uniform over K classes, or the mask token K (Gat et al. 2024)."""

    def __init__(self, num_classes: int, kind: str = "uniform") -> None:
        if kind not in ("uniform", "mask"):
            raise ValueError(f"categorical source kind must be 'uniform' or 'mask', got {kind!r}")
        self.num_classes, self.kind = int(num_classes), kind

    def sample(self, like: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.kind == "mask":
            x = torch.full(like.shape, self.num_classes, dtype=torch.long, device=like.device)
        else:
            x = torch.randint(0, self.num_classes, like.shape, device=like.device)
        if mask is not None:
            x = torch.where(broadcast_mask(mask, x), x, torch.zeros_like(x))
        return x


class StateSource:
    """Sources for a whole state: ``default`` for every field but those in ``per_field`` (the argument
    order of :class:`~fmkit.flow.paths.StatePath`); ``mask`` and ``cond`` are copied from the data.
    ``StateSource(per_field, default)``, the order of fmkit 0.1, is still understood."""

    def __init__(self, default: Source | Mapping[str, Source] | None = None,
                 per_field: Mapping[str, Source] | Source | None = None) -> None:
        if isinstance(default, Mapping) or (per_field is not None and not isinstance(per_field, Mapping)):
            default, per_field = per_field, default  # type: ignore[assignment]  # the 0.1 order
        self.per_field = dict(per_field or {})  # type: ignore[arg-type]
        self.default = default or GaussianSource()

    def for_field(self, name: str) -> Source:
        return self.per_field.get(name, self.default)

    def sample(self, like: State) -> State:
        """x0 shaped like ``like``'s fields; a per-field source that returns another shape is named
        (it would broadcast in the path without an error)."""
        out = {k: self.for_field(k).sample(v, field_mask(like, k)) for k, v in fields(like).items()}
        for k, v in fields(like).items():
            if getattr(out[k], "shape", None) != v.shape:
                check_same_fields({k: out[k]}, {k: v}, f"the source {type(self.for_field(k)).__name__}")
        out.update(passengers(like))
        return out

    def log_prob(self, x: State) -> Tensor:
        logp = (self.for_field(k).log_prob(v, field_mask(x, k)) for k, v in fields(x).items())
        return sum(logp)  # type: ignore[return-value]
