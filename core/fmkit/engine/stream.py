"""The trainer's data pipeline: a deterministic stream of (micro-)batches, optionally paired with
source noise on the CPU ahead of the step.

Position ``(epoch, index)`` -> batch, from ``dataset.batches(epoch, ...)``, a pure function of the
seed; that is what makes exact resume and DDP sharding possible without pickling sampler state.
With ``pairing`` (a :class:`LoaderPairing`), every micro-batch also gets its source sample ``x0``,
already re-paired by the coupling, drawn from a seed of its own ``(seed, epoch, batch, shard)``: the
result depends neither on the number of DataLoader workers nor on how shards are spread over
processes. Workers (``num_workers > 0``) persist for the whole run and prefetch.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Union

import torch

from fmkit.engine.distributed import DistInfo, fold_seed, shard_slices
from fmkit.errors import NonFiniteDataError, TrainingError
from fmkit.flow.couplings import Coupling, draw_and_pair
from fmkit.flow.data import Dataset, Indices
from fmkit.flow.sources import StateSource
from fmkit.flow.state import State, pin, to_device

PAIRING_STREAM = 0x70616972  # "pair": keeps the loader's noise apart from the step's streams

Item = tuple[Indices, int, int, int]
"""One micro-batch to load: (example indices, epoch, global batch number in the epoch, shard)."""

Loaded = Union[State, tuple[State, State]]
"""What the stream yields: the data batch x1, or ``(x0, x1)`` when it pairs."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity, e.g. a container's or a scheduler's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class LoaderPairing:
    """Draws ``x0 ~ source`` for a CPU batch ``x1`` and re-pairs it with ``coupling``, from ``seed``.

    Runs in DataLoader workers (or the main process), so ``source`` and ``coupling`` must work on CPU
    tensors; it re-seeds the process's global CPU generator, which the trainer re-seeds per step anyway.
    """

    def __init__(self, source: StateSource, coupling: Coupling) -> None:
        self.source, self.coupling = source, coupling

    def __call__(self, x1: State, seed: int) -> tuple[State, State]:
        torch.default_generator.manual_seed(seed)
        with torch.no_grad():
            try:
                return draw_and_pair(self.source, self.coupling, x1)
            except NonFiniteDataError:
                # a batch with NaN/Inf goes on unpaired: the trainer's NaN check then names its field and
                # saves the last good state (raised in a worker, the error would arrive as a traceback string)
                return self.source.sample(x1), x1


class BatchStream:
    """Deterministic stream of this rank's micro-batches (see the module docstring).

    Each global batch of ``global_batch`` examples (``trainer.batch_size``, all ranks and micro-steps)
    is cut into ``accum x world`` strided shards, and rank r's micro-step m takes shard ``m * world + r``
    (:func:`fmkit.engine.distributed.shard_slices`), so the split does not depend on the process count.

    Args:
        dataset: the training data; its ``batches(epoch, global_batch, seed)`` gives the example indices.
        global_batch: examples per optimizer step over all ranks and micro-steps (``trainer.batch_size``).
        seed: the run's seed; with the position it fixes every batch (and its noise when pairing).
        dist: this process's rank and the world size.
        num_workers: DataLoader worker processes (0: load in the main process); capped at the usable cores.
        pin_memory: pin the batches for an asynchronous copy to a GPU.
        epoch: the epoch to start in (a resume's saved position).
        index: this rank's micro-batch index within ``epoch`` to start at.
        accum: micro-batches per global batch on each rank (gradient accumulation).
        pairing: draw and pair the source sample x0 with each batch in the loader; None: yield x1 alone.
    """

    def __init__(self, dataset: Dataset, global_batch: int, seed: int, dist: DistInfo, num_workers: int = 0,
                 pin_memory: bool = False, epoch: int = 0, index: int = 0, accum: int = 1,
                 pairing: LoaderPairing | None = None) -> None:
        self.dataset, self.global_batch, self.seed, self.dist = dataset, global_batch, seed, dist
        self.accum = accum
        self.num_workers = min(num_workers, usable_cores())  # more workers than cores only thrash
        self.pin_memory = pin_memory
        self.epoch, self.index = epoch, index
        self._it: Iterator[Loaded] | None = None
        self._loader: torch.utils.data.DataLoader | None = None  # made on first use when num_workers > 0
        self._sampler: _EpochSampler | None = None
        self._load = _Load(dataset, seed, pairing)

    def _epoch_items(self) -> list[Item]:
        try:
            batches = self.dataset.batches(self.epoch, self.global_batch, self.seed)
        except ValueError as exc:  # e.g. fewer examples than one batch
            raise TrainingError(f"the dataset cannot give batches of {self.global_batch}: {exc}",
                                where="trainer.batch_size",
                                fix="lower trainer.batch_size (the global batch of all processes), or use more "
                                    "data") from exc
        if not batches:
            raise TrainingError(f"the dataset gives no batch of {self.global_batch}", fix="lower trainer.batch_size")
        r, w, a = self.dist.rank, self.dist.world_size, self.accum
        if w == 1 and a == 1:
            return [(idx, self.epoch, b, 0) for b, idx in enumerate(batches)]
        return [(s, self.epoch, b, m * w + r) for b, idx in enumerate(batches)
                for m, s in enumerate(shard_slices(idx, a, w, r))]

    def _start(self) -> Iterator[Loaded]:
        items = self._epoch_items()[self.index:]
        if self.num_workers == 0:
            return (self._load[it] for it in items)
        if self._loader is None or self._sampler is None:  # one loader for the run: workers persist
            self._sampler = _EpochSampler()
            self._loader = torch.utils.data.DataLoader(
                self._load, sampler=self._sampler, batch_size=None, num_workers=self.num_workers,
                pin_memory=self.pin_memory, prefetch_factor=4, persistent_workers=True,
                worker_init_fn=_ignore_stop_signals)
        self._sampler.items = items  # read by the main process when the epoch's iterator starts
        return iter(self._loader)

    def __next__(self) -> Loaded:
        while True:
            if self._it is None:
                self._it = self._start()
            try:
                batch = next(self._it)
                self.index += 1
                return batch
            except StopIteration:
                self._it = None
                self.epoch, self.index = self.epoch + 1, 0

    def next_on(self, device: torch.device) -> tuple[State | None, State]:
        """The next micro-batch on ``device``: ``(x0, x1)`` with x0 paired already when the pipeline
        pairs (``trainer.pairing``), else ``(None, x1)``."""
        item = next(self)
        if device.type == "cuda" and self.num_workers == 0:
            # a copy from pageable memory waits for the GPU's queue; from pinned memory it overlaps
            # (with workers, the DataLoader pins)
            item = pin(item)
        if isinstance(item, (tuple, list)):  # pinned-memory collation turns the pair into a list
            x0, x1 = item
            return to_device(x0, device, non_blocking=True), to_device(x1, device, non_blocking=True)
        return None, to_device(item, device, non_blocking=True)

    def position(self) -> dict[str, int]:
        """Where the stream is: ``index`` counts this rank's micro-batches in the epoch, ``accum`` of
        them per global batch (the same count on every rank, whatever the number of processes)."""
        return {"epoch": self.epoch, "index": self.index, "accum": self.accum}

    def close(self) -> None:
        """End the worker processes now (they persist otherwise); the stream can go on from its
        position, restarting them when next asked."""
        it, self._it, self._loader, self._sampler = self._it, None, None, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def resume_index(position: dict[str, int], accum: int) -> int:
    """The micro-batch index to resume at with ``accum`` micro-batches per global batch, from a
    :meth:`BatchStream.position` saved at an optimizer-step boundary, whatever its own ``accum`` (a
    resume may trade processes for accumulation: 8 x 1 -> 4 x 2). Positions saved before ``accum``
    was recorded are taken to have the new one."""
    saved = int(position.get("accum", accum))
    return int(position.get("index", 0)) // saved * accum


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers leave Ctrl-C / SIGTERM to the main process: a terminal or a scheduler signals the
    whole process group, and a worker that died then would fail the step the trainer is finishing
    before it saves a checkpoint. The main process shuts the workers down; they also end with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _EpochSampler(torch.utils.data.Sampler):
    """The current epoch's items; BatchStream swaps them per epoch."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class _Load(torch.utils.data.Dataset):
    """Item -> batch (and its paired noise): what a worker, or the main process, runs."""

    def __init__(self, ds: Dataset, seed: int, pairing: LoaderPairing | None) -> None:
        self.ds, self.seed, self.pairing = ds, seed, pairing

    def __getitem__(self, item: Item) -> Loaded:
        idx, epoch, b, shard = item
        x1 = self.ds.get_batch(idx)
        if self.pairing is None:
            return x1
        return self.pairing(x1, fold_seed(self.seed, PAIRING_STREAM, epoch, b, shard))

    def __len__(self) -> int:
        return len(self.ds)
