"""``bucketed_batches``, the batch order of data of variable sizes (the audio and molecules plugins use
it): a pure function of its arguments, every batch of one epoch full and disjoint, batches of similar
sizes (far less padding than a random order), the left-out remainder and the order changing with the
epoch."""

from __future__ import annotations

import numpy as np
import pytest
from fmkit.flow.data import bucketed_batches


def _padding(sizes: np.ndarray, batches: list[list[int]]) -> float:
    total = sum(int(sizes[b].max()) * len(b) for b in batches)
    return 1.0 - sum(int(sizes[b].sum()) for b in batches) / total


def test_batches_are_full_disjoint_and_a_function_of_their_arguments():
    sizes = np.random.default_rng(0).integers(5, 30, size=103)
    a = bucketed_batches(sizes, 2, 10, seed=7)
    assert a == bucketed_batches(list(sizes), 2, 10, seed=7)  # a list of sizes is the same data
    assert len(a) == 10 and all(len(b) == 10 for b in a)
    flat = [i for b in a for i in b]
    assert len(set(flat)) == 100 and all(0 <= i < 103 for i in flat)
    assert a != bucketed_batches(sizes, 3, 10, seed=7) and a != bucketed_batches(sizes, 2, 10, seed=8)
    assert a != bucketed_batches(sizes, 2, 10, seed=7, stream=1)


def test_batches_hold_similar_sizes():
    sizes = np.random.default_rng(1).integers(1, 60, size=2000)
    bucketed = _padding(sizes, bucketed_batches(sizes, 0, 32, seed=0))
    perm = np.random.default_rng(2).permutation(2000)[:1984].reshape(-1, 32).tolist()
    assert bucketed < 0.05 and _padding(sizes, perm) > 0.3, (bucketed, _padding(sizes, perm))


def test_the_left_out_examples_change_with_the_epoch():
    sizes = np.full(25, 4)
    left_out = [set(range(25)) - {i for b in bucketed_batches(sizes, e, 10, seed=0) for i in b} for e in range(6)]
    assert all(len(s) == 5 for s in left_out) and len({frozenset(s) for s in left_out}) > 1


def test_fewer_examples_than_one_batch_is_refused():
    with pytest.raises(ValueError, match="fewer than one batch of 8"):
        bucketed_batches([3, 4, 5], 0, 8, seed=0)
