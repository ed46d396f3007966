"""Sample-quality metrics of the core (the toy modality's W2)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from fmkit.flow.data import Dataset
from fmkit.flow.state import State

V = TypeVar("V")


def metric_tables(rows: Sequence[tuple[str, V]], metrics: Iterable[object]) -> list[tuple[str | None, list[tuple[str, V]]]]:
    """``rows`` (metric name, value) split into the tables the metrics ask to be shown in.

    A metric may declare ``tables = {title: [names]}``: a protocol of its own that readers compare
    with another paper's table (the molecules plugin's RDKit-perception table, say). Rows no metric
    places stay in the first table (title None), in their order; a declared table follows, in the
    order of its names, only when it has rows. Display only: metrics.csv keeps flat names.
    """
    where: dict[str, str] = {}
    for m in metrics:
        for title, names in (getattr(m, "tables", None) or {}).items():
            for name in names:
                where.setdefault(name, title)
    main = [(k, v) for k, v in rows if k not in where]
    out: list[tuple[str | None, list[tuple[str, V]]]] = [(None, main)] if main or not where else []
    by_name = dict(rows)
    for title in dict.fromkeys(where.values()):
        group = [(k, by_name[k]) for k, t in where.items() if t == title and k in by_name]
        if group:
            out.append((title, group))
    return out


def wasserstein2(a: Tensor, b: Tensor) -> float:
    """Exact W2 between two empirical measures of equal size n: sqrt(min_perm mean ||a_i - b_perm(i)||^2).

    For uniform weights and equal sizes the optimal plan is a permutation, so the assignment
    problem solves OT exactly. Larger sets are cut to the smaller size.
    """
    n = min(a.shape[0], b.shape[0])
    x = a[:n].reshape(n, -1).double().cpu()
    y = b[:n].reshape(n, -1).double().cpu()
    cost = torch.cdist(x, y).pow(2).numpy()
    r, c = linear_sum_assignment(cost)
    return math.sqrt(float(np.mean(cost[r, c])))


class W2Metric:
    """W2 between generated samples and ``num_reference`` data points of a field."""

    def __init__(self, field: str = "x", num_reference: int = 2000, seed: int = 1234) -> None:
        self.field, self.num_reference, self.seed = field, num_reference, seed

    def __call__(self, samples: State, dataset: Dataset) -> dict[str, float]:
        ref = dataset.reference(min(self.num_reference, samples[self.field].shape[0]), seed=self.seed)
        return {"w2": wasserstein2(samples[self.field], ref[self.field])}
