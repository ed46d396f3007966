"""The dataset contract: what a ``datasets`` registry entry builds.

A :class:`Dataset` holds examples as states without the batch dimension, knows how to collate a
list of them into a batch (padding + mask for variable sizes), and decides the order of batches
for each epoch deterministically from ``(seed, epoch)`` — which is what makes exact resume and
DDP sharding possible without pickling sampler state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import default_collate

from fmkit.errors import DataError
from fmkit.flow.state import State

Indices = Sequence[int] | np.ndarray
"""The examples of one batch: a list of ints or an int64 array (arrays skip a list -> tensor copy)."""


@dataclass(frozen=True)
class FieldInfo:
    """Per-example description of one field.

    ``shape`` excludes the batch dim; a ``None`` entry is a variable size (e.g. atom count).
    ``num_classes`` is set for categorical fields (integer class indices).
    """

    shape: tuple[int | None, ...]
    num_classes: int | None = None

    @property
    def categorical(self) -> bool:
        return self.num_classes is not None


@dataclass(frozen=True)
class DataInfo:
    """What models, sources and metrics need to know about a dataset."""

    fields: dict[str, FieldInfo]
    num_cond_classes: int | None = None
    has_mask: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def null_class(self) -> int | None:
        """The label of a dropped condition (classifier-free guidance): K for labels 0..K-1, so a label
        embedding has K + 1 rows; None for data without condition classes."""
        return self.num_cond_classes

    def dim(self, name: str = "x") -> int:
        """Flat size of a fixed-shape field."""
        shape = self.fields[name].shape
        if any(s is None for s in shape):
            raise ValueError(f"field {name!r} has a variable shape {shape}")
        n = 1
        for s in shape:
            n *= int(s)  # type: ignore[arg-type]
        return n


class Dataset(torch.utils.data.Dataset):
    """Base class for fmkit datasets. Subclasses set ``info`` and implement ``__len__``/``__getitem__``.

    ``__getitem__`` returns a state without batch dim (a dict of tensors, ``"cond"`` optional).
    """

    info: DataInfo

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __getitem__(self, i: int) -> State:  # pragma: no cover - abstract
        raise NotImplementedError

    def collate(self, items: Sequence[State]) -> State:
        """Stack examples into a batch. Variable-size datasets override this to pad and mask."""
        return default_collate(list(items))

    def get_batch(self, idx: Indices) -> State:
        """The batch of examples ``idx``; in-memory datasets override it with one gather."""
        return self.collate([self[i] for i in idx])

    def batches(self, epoch: int, batch_size: int, seed: int) -> list[Indices]:
        """Index lists for every batch of ``epoch``, a pure function of ``(seed, epoch)``.

        The default is a random permutation cut into full batches (the remainder is dropped).
        Datasets with variable sizes override it to bucket similar sizes together.
        """
        n = len(self)
        if n < batch_size:
            raise ValueError(f"dataset has {n} examples, fewer than one batch of {batch_size}")
        g = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        perm = torch.randperm(n, generator=g).numpy()  # int64 views: get_batch gathers with no copy
        return [perm[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]

    def reference(self, n: int, seed: int = 0) -> State:
        """A batch of ``n`` held-out or training examples for metrics (deterministic)."""
        n = min(n, len(self))
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].tolist()
        return self.collate([self[i] for i in idx])

    def template(self, n: int, seed: int = 0) -> State:
        """A batch of ``n`` examples drawn with replacement, whose shapes, masks and conditions
        generation copies (sizes and labels then follow the data distribution, as in EDM)."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randint(0, len(self), (n,), generator=g).tolist()
        return self.collate([self[i] for i in idx])

    def class_template(self, cond: Tensor, seed: int = 0) -> State:
        """A template like :meth:`template` whose examples have the classes ``cond`` [n] (``fmkit sample
        --class``): here ``template(n)`` with its ``cond`` replaced. A dataset whose sizes or masks follow
        the class (the frames of a spoken digit) overrides it, e.g. with :func:`examples_of_classes`."""
        out = dict(self.template(len(cond), seed=seed))
        out["cond"] = cond.to(out["cond"].dtype) if "cond" in out else cond.long()
        return out


def examples_of_classes(labels: Tensor, cond: Tensor, seed: int = 0) -> Tensor:
    """For each class of ``cond`` [n], a random example (index into ``labels`` [N]) of that class, drawn
    with replacement and deterministically from ``seed``; a class no example has is a :class:`DataError`."""
    counts = torch.bincount(labels, minlength=int(cond.max()) + 1)
    missing = sorted({int(c) for c in cond if counts[c] == 0})
    if missing:
        raise DataError(f"the data holds no example of class(es) {missing}, so samples of them have no template",
                        where="--class / --per-class", fix="choose classes the training data holds")
    order = torch.argsort(labels, stable=True)
    starts = counts.cumsum(0) - counts
    g = torch.Generator().manual_seed(seed)
    offset = (torch.rand(len(cond), generator=g, dtype=torch.float64) * counts[cond]).long()
    return order[starts[cond] + offset]


def bucketed_batches(sizes: Sequence[int] | np.ndarray, epoch: int, batch_size: int, seed: int, *,
                     stream: int = 0) -> list[list[int]]:
    """Batches of examples of similar size, so little of a padded batch is padding: what a dataset of
    variable sizes (atoms, frames) returns from :meth:`Dataset.batches`.

    A random ``len % batch_size`` examples are left out (so no size is always the one dropped); the
    rest are sorted by size with random tie-breaks, cut into batches and the batches shuffled. The
    result is a pure function of its arguments (exact resume and DDP sharding rely on it).

    Args:
        sizes: each example's size [N] (atom count, number of frames).
        epoch: the epoch whose batches these are.
        batch_size: examples per batch.
        seed: the run's seed.
        stream: a constant of the dataset's own, so two datasets draw different orders from one seed.

    Returns:
        ``N // batch_size`` lists of ``batch_size`` example indices.
    """
    sizes = np.asarray(sizes)
    n = len(sizes)
    if n < batch_size:
        raise ValueError(f"dataset has {n} examples, fewer than one batch of {batch_size}")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(stream)])
    keep = rng.permutation(n)[: n - n % batch_size]
    order = keep[np.lexsort((rng.random(len(keep)), sizes[keep]))]
    chunks = order.reshape(-1, batch_size)
    return [c.tolist() for c in chunks[rng.permutation(len(chunks))]]


class TensorDataset(Dataset):
    """A dataset over in-memory tensors: a bare ``[N, ...]`` tensor or a state of them.

    Library users pass their own data here: ``TensorDataset(x)`` or ``TensorDataset({"x": x, "cond": y})``.
    """

    def __init__(self, data: Tensor | dict[str, Tensor], num_cond_classes: int | None = None) -> None:
        self.data: State = {"x": data} if isinstance(data, Tensor) else dict(data)
        lengths = {k: v.shape[0] for k, v in self.data.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"all fields need the same number of examples, got {lengths}")
        self._n = next(iter(lengths.values()))
        fields_info = {}
        for k, v in self.data.items():
            if k in ("cond", "mask"):
                continue
            ncls = int(v.max().item()) + 1 if not v.is_floating_point() else None
            fields_info[k] = FieldInfo(tuple(v.shape[1:]), ncls)
        self.info = DataInfo(fields_info, num_cond_classes=num_cond_classes, has_mask="mask" in self.data)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int) -> State:
        return {k: v[i] for k, v in self.data.items()}

    def collate(self, items: Sequence[State]) -> State:
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def get_batch(self, idx: Indices) -> State:
        """Fast path: one gather per field."""
        i = torch.from_numpy(np.asarray(idx, dtype=np.int64))  # no copy for an int64 array
        return {k: v[i] for k, v in self.data.items()}


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2**63 - 1)
