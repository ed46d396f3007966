"""The steps since the last log line: their losses, their training time (checkpoints and evaluations
set aside), and the time the host waited for data — what one line of ``metrics.csv`` reports."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from fmkit.engine.distributed import all_reduce_mean


class LogWindow:
    """The steps since the last log line. ``losses``: their losses (device tensors, not synced), which a
    checkpoint keeps so that a resumed run's next line averages the same steps; ``losses`` passed in are
    such a checkpoint's. The window's clock starts with :meth:`start` (each fit)."""

    def __init__(self, losses: Iterable[Tensor] = ()) -> None:
        self.losses: list[Tensor] = list(losses)
        self.start(0)

    def start(self, step: int) -> None:
        """Time from now on, at ``step``; the losses so far stay in the window."""
        self._start_time, self._start_step = time.perf_counter(), step
        self.wait = 0.0  # host seconds spent waiting for batches
        self._aside = 0.0  # seconds of checkpoints and evaluations: not training, kept out of steps/s

    def pending(self, world_size: int) -> list[float]:
        """The window's losses for a checkpoint, each averaged over the ranks as the log line will be
        (a collective under DDP: every rank calls)."""
        if world_size > 1 and self.losses:
            return all_reduce_mean(torch.stack(self.losses).float(), world_size).tolist()
        return [float(v) for v in self.losses]

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        """Time spent in the block is not training time."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self._aside += time.perf_counter() - t

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Time spent in the block is time waiting for data."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.wait += time.perf_counter() - t

    def close(self, step: int, loss: float, lr: float, batch_size: int, grad_norm: Tensor | None = None,
              device: torch.device | None = None) -> dict[str, float]:
        """The scalars of the window ending at ``step``; starts the next.

        ``data_wait`` is the share of the training time the host waited for the data pipeline (its
        loader workers, pairing included): near 0 means the step, not the data, sets the pace.

        Args:
            step: the optimizer step the window ends at.
            loss: the window's mean loss over ranks.
            lr: the learning rate at ``step``.
            batch_size: examples per optimizer step (global batch), for ``samples_per_s``.
            grad_norm: the last step's gradient norm before clipping (a 0-dim tensor); None: not logged.
            device: the training device; on CUDA its peak memory is logged.

        Returns:
            ``loss``, ``lr``, ``steps_per_s`` and ``samples_per_s`` (time of checkpoints and evaluations
            left out), ``data_wait`` (a share in [0, 1]), plus ``peak_mem_mib`` (MiB) on CUDA and
            ``grad_norm`` when given.
        """
        now = time.perf_counter()
        busy = max(now - self._start_time - self._aside, 1e-9)
        sps = (step - self._start_step) / busy
        scalars = {"loss": loss, "lr": lr, "steps_per_s": sps, "samples_per_s": sps * batch_size,
                   "data_wait": self.wait / busy}
        if device is not None and device.type == "cuda":
            scalars["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        if grad_norm is not None:
            scalars["grad_norm"] = float(grad_norm)
        self._start_time, self._start_step, self.wait, self._aside = now, step, 0.0, 0.0
        self.losses.clear()
        return scalars
