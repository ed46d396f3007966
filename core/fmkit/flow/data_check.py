"""Checking that a dataset keeps the contract of :mod:`fmkit.flow.data`, before any training.

A dataset that breaks it (items of different shapes where its ``info`` says fixed, a field missing,
``info`` not matching the tensors, an integer dtype for a continuous field) would otherwise fail deep
inside collation or the model, where the error names neither the dataset nor its plugin. The check
reads a few examples and one collated batch; it is what a recipe build runs and what
``fmkit.testing.check_dataset`` runs in a plugin's own tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from fmkit.errors import ContractError
from fmkit.flow.data import DataInfo, Dataset, FieldInfo
from fmkit.flow.state import COND, MASK

_FIX = "a bug in the dataset's code: report it to its authors (fmkit is not the cause)"


def check_dataset(dataset: Dataset, *, who: str = "the dataset", n: int = 4) -> None:
    """Raise a :class:`ContractError` naming ``who`` (e.g. ``dataset 'mnist' of plugin 'fmkit_image'``)
    unless the first ``n`` examples and their collated batch fit ``dataset.info``."""
    info = getattr(dataset, "info", None)
    if not isinstance(info, DataInfo):
        raise ContractError(f"{who} has no `info` DataInfo (got {type(info).__name__})", where=who,
                            fix="set `self.info = DataInfo({...})` in the dataset's __init__")
    if not info.fields:
        raise ContractError(f"{who} declares no fields in its info", where=who,
                            fix="declare each tensor an example holds: DataInfo({'x': FieldInfo(shape)})")
    try:
        size = len(dataset)
    except Exception as exc:
        raise ContractError(f"{who}: len() failed: {type(exc).__name__}: {exc}", where=who, fix=_FIX) from exc
    if size == 0:
        raise ContractError(f"{who} holds no examples", where=who,
                            fix="check its data root and options (an empty folder or split?)")
    idx = list(range(min(n, size)))
    items = [_item(dataset, i, who) for i in idx]
    for i, item in zip(idx, items, strict=True):
        _check_item(item, info, f"{who}, example {i}")
    varying = _varying_fields(items, info)
    if varying and not info.has_mask:
        raise ContractError(f"{who}: field(s) {varying} differ in size between examples but the info declares "
                            "no mask (has_mask=False)", where=who,
                            fix="set has_mask=True and pad in collate, or make the examples one size")
    try:
        batch = dataset.get_batch(idx)
    except ContractError:
        raise
    except Exception as exc:
        shapes = {k: [tuple(it[k].shape) for it in items if isinstance(it.get(k), Tensor)] for k in info.fields}
        raise ContractError(f"{who} cannot collate examples {idx}: {type(exc).__name__}: {exc}",
                            where=f"{who}, shapes per field: {shapes}", fix=_FIX) from exc
    _check_batch(batch, info, len(idx), f"{who}, batch of examples {idx}")


def _item(dataset: Dataset, i: int, who: str) -> Mapping[str, Any]:
    try:
        item = dataset[i]
    except Exception as exc:
        raise ContractError(f"{who}: reading example {i} failed: {type(exc).__name__}: {exc}", where=who,
                            fix=_FIX) from exc
    if not isinstance(item, Mapping):
        raise ContractError(f"{who}: example {i} is a {type(item).__name__}, not a state (dict of tensors)",
                            where=who, fix="return {field: tensor, ...} from __getitem__")
    return item


def _check_item(item: Mapping[str, Any], info: DataInfo, where: str) -> None:
    for name, fi in info.fields.items():
        if name not in item:
            raise ContractError(f"field {name!r} declared in the info is missing from the example "
                                f"(it holds {sorted(item)})", where=where,
                                fix="return every declared field, or declare only the fields the examples hold")
        _check_field(item[name], fi, name, where, batch=None)
    if info.num_cond_classes is not None:
        _check_cond(item.get(COND), info.num_cond_classes, where, batch=None)


def _check_batch(batch: Any, info: DataInfo, b: int, where: str) -> None:
    if not isinstance(batch, Mapping):
        raise ContractError(f"collate returned a {type(batch).__name__}, not a state (dict of tensors)",
                            where=where, fix=_FIX)
    for name, fi in info.fields.items():
        if name not in batch:
            raise ContractError(f"field {name!r} is missing from the collated batch (it holds {sorted(batch)})",
                                where=where, fix=_FIX)
        _check_field(batch[name], fi, name, where, batch=b)
    if info.has_mask:
        mask = batch.get(MASK)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape[:1] != (b,):
            got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor) else type(mask).__name__
            raise ContractError(f"the collated batch needs a bool 'mask' of batch size {b}; got {got}",
                                where=where, fix="collate must pad the examples and return mask (True = real)")
    if info.num_cond_classes is not None:
        _check_cond(batch.get(COND), info.num_cond_classes, where, batch=b)


def _check_field(t: Any, fi: FieldInfo, name: str, where: str, *, batch: int | None) -> None:
    if not isinstance(t, Tensor):
        raise ContractError(f"field {name!r} is a {type(t).__name__}, not a tensor", where=where, fix=_FIX)
    want = fi.shape if batch is None else (batch, *fi.shape)
    if t.dim() != len(want) or any(w is not None and w != s for w, s in zip(want, t.shape, strict=True)):
        shown = tuple("*" if w is None else w for w in want)
        raise ContractError(f"field {name!r} has shape {tuple(t.shape)}; the info declares {shown} "
                            f"({'per example' if batch is None else 'per batch'}; * = any size)", where=where,
                            fix="make the info's FieldInfo shape match the tensors (None for a variable size)")
    if fi.categorical:
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ContractError(f"field {name!r} is categorical ({fi.num_classes} classes) but has dtype {t.dtype}",
                                where=where, fix="return class indices as torch.long")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= int(fi.num_classes)):  # type: ignore[arg-type]
            raise ContractError(f"field {name!r} holds class indices in [{int(t.min())}, {int(t.max())}]; the "
                                f"info declares {fi.num_classes} classes", where=where,
                                fix=f"indices must lie in [0, {int(fi.num_classes) - 1}]")  # type: ignore[arg-type]
    elif not t.is_floating_point():
        raise ContractError(f"field {name!r} is continuous (no num_classes in its info) but has dtype {t.dtype}",
                            where=where, fix="return it as a float tensor, or declare num_classes if it is "
                                             "categorical")


def _check_cond(cond: Any, num_classes: int, where: str, *, batch: int | None) -> None:
    fix = "return the class label under 'cond' (torch.long), or set num_cond_classes=None"
    if not isinstance(cond, Tensor):
        raise ContractError(f"the info declares {num_classes} condition classes but the "
                            f"{'example' if batch is None else 'batch'} holds no 'cond' tensor", where=where, fix=fix)
    if cond.is_floating_point() or cond.dtype == torch.bool:
        raise ContractError(f"'cond' is a class label ({num_classes} classes) but has dtype {cond.dtype}",
                            where=where, fix=fix)
    if cond.numel() and (int(cond.min()) < 0 or int(cond.max()) >= num_classes):
        raise ContractError(f"'cond' holds labels in [{int(cond.min())}, {int(cond.max())}]; the info declares "
                            f"{num_classes} classes", where=where, fix=f"labels must lie in [0, {num_classes - 1}]")


def _varying_fields(items: list[Mapping[str, Any]], info: DataInfo) -> list[str]:
    out = []
    for name in info.fields:
        shapes = {tuple(it[name].shape) for it in items}
        if len(shapes) > 1:
            out.append(name)
    return out
