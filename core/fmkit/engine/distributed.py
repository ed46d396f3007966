"""torch.distributed awareness: rank/world from torchrun's environment, process-group setup, the
per-shard random streams that make DDP training independent of how a batch is split, and the
small collectives the trainer needs (loss averaging, gathering evaluation samples).

Determinism contract (see docs/scale.md): an optimizer step's global batch is cut into
``grad_accum x world_size`` shards; shard ``j`` draws all its randomness (source noise, t, coupling,
dropout, ...) from a stream seeded by ``(seed, step, j)``. So a run depends on the recipe and on the
number of shards, not on how the shards are spread over processes: 2 processes x 1 micro-batch
train the same weights (to float rounding) as 1 process x 2 micro-batches, and resuming re-creates
every rank's stream exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0


def dist_info() -> DistInfo:
    """Rank and world size of an initialised process group (else a single process)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo()


def init_from_env(backend: str | None = None, device: str = "auto") -> DistInfo:
    """Initialise the default process group when launched by ``torchrun`` (WORLD_SIZE > 1).

    The backend is NCCL when the run trains on CUDA (``device`` "cuda", or "auto" with CUDA
    available), else gloo; ``FMKIT_DIST_BACKEND`` overrides it. Collectives time out after
    ``FMKIT_DIST_TIMEOUT_MIN`` minutes (default 60: rank 0 alone computes the evaluation metrics
    while the others wait, which can outlast torch's 10-minute NCCL default on 10k molecules).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and torch.distributed.is_available() and not torch.distributed.is_initialized():
        cuda = torch.cuda.is_available() and not device.startswith("cpu")
        backend = backend or os.environ.get("FMKIT_DIST_BACKEND") or ("nccl" if cuda else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        minutes = float(os.environ.get("FMKIT_DIST_TIMEOUT_MIN", "60"))
        torch.distributed.init_process_group(backend=backend, timeout=timedelta(minutes=minutes))
    return dist_info()


# ----------------------------------------------------------------------------------------------
# Per-shard random streams
# ----------------------------------------------------------------------------------------------
def _mix64(z: int) -> int:
    """splitmix64's finaliser: a bijective 64-bit hash with good avalanche."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def fold_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys, hashed in order (distinct key tuples give unrelated seeds,
    unlike ``seed + step``)."""
    z = 0
    for k in keys:
        z = _mix64(z ^ (int(k) & _MASK64))
    return z >> 1


def shard_seed(seed: int, step: int, shard: int) -> int:
    """The seed of training shard ``shard`` of optimizer step ``step``."""
    return fold_seed(seed, step, shard)


SAMPLING_STREAM = 0x73616D706C65  # "sample": keeps sampling streams apart from training ones


def seed_generators(seed: int, device: torch.device) -> None:
    """Re-seed the global generators that ops on ``device`` draw from: the CPU one and, on CUDA, the
    device's. (Far cheaper than ``torch.manual_seed``, which visits every device.)"""
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[idx].manual_seed(seed)


def seed_shard(seed: int, step: int, shard: int, device: torch.device) -> None:
    """Seed the stream of training shard ``shard`` of step ``step`` (see the module docstring)."""
    seed_generators(shard_seed(seed, step, shard), device)


def shard_slices(batch: Sequence[int], accum: int, world: int, rank: int) -> list[Sequence[int]]:
    """Rank ``rank``'s micro-batches of one global batch: shard ``m * world + rank`` for each
    micro-step ``m``, shard ``j`` holding every ``accum * world``-th example from ``j``. Strided (not
    contiguous) so that size-bucketed batches give every rank the same mix of sizes."""
    n = accum * world
    return [batch[m * world + rank::n] for m in range(accum)]


# ----------------------------------------------------------------------------------------------
# Collectives (no-ops in a single process)
# ----------------------------------------------------------------------------------------------
def all_reduce_mean(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """Mean over ranks, in place and returned (``x`` itself when there is one process)."""
    if world_size > 1:
        torch.distributed.all_reduce(x)
        x /= world_size
    return x


def barrier(world_size: int) -> None:
    """Wait for every rank (a no-op in a single process)."""
    if world_size > 1:
        torch.distributed.barrier()


class StopVote:
    """Ranks agree on a stop signal (Ctrl-C, SIGTERM) at the same optimizer step.

    A launcher or a scheduler signals every rank, but each notices it at whichever step it is in;
    a rank that stops alone leaves the others waiting in the next step's collectives. So each step
    end posts the rank's flag to a non-blocking MAX all-reduce over a CPU (gloo) group and reads the
    one posted a step earlier: every rank reads the same value at the same step, nothing waits on
    the GPU, and a stop comes one step after the signal. One process: the flag itself, at once.
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._group: Any = None
        self._work: Any = None
        self._buf: torch.Tensor | None = None
        if world_size > 1:  # a group of its own, gloo (CPU tensors, off the GPU's streams) even under gloo:
            # on the default gloo group, this in-flight all-reduce beside DDP's made a rank abort in about
            # half the 2-process runs ("terminate called without an active exception")
            self._group = torch.distributed.new_group(backend="gloo")

    def __call__(self, flag: int) -> int:
        """Post ``flag`` (0: go on; else a signal number) and return the agreed one (0 or the largest)."""
        if self.world_size == 1:
            return flag
        agreed = self.finish()
        if agreed:  # every rank stops here: post nothing more
            return agreed
        self._buf = torch.tensor([flag], dtype=torch.int64)
        self._work = torch.distributed.all_reduce(self._buf, op=torch.distributed.ReduceOp.MAX,
                                                  group=self._group, async_op=True)
        return agreed

    def finish(self) -> int:
        """Wait for the vote in flight, if any, and return its result (every rank must call this as
        often as the others: the last vote of a fit is collected when it ends)."""
        if self._work is None or self._buf is None:
            return 0
        self._work.wait()
        self._work = None
        return int(self._buf[0])


def all_gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every rank's ``obj`` (picklable, e.g. a dict of CPU tensors), in rank order."""
    if world_size == 1:
        return [obj]
    out: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(out, obj)
    return out
