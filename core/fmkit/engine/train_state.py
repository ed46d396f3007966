"""What a run resumes from: :class:`TrainState`, a value with its own to/from-checkpoint, and the
checks that put it back exactly (weights that fit the model, an optimizer state that fits its
parameters, the random streams of each rank)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from fmkit.engine.checkpoint import CheckpointData
from fmkit.engine.fingerprint import check_fingerprint
from fmkit.engine.hints import FixHints
from fmkit.engine.optim import match_param_layouts
from fmkit.errors import CheckpointError


@dataclass
class TrainState:
    """Everything a Trainer needs to go on exactly where it stopped.

    ``model``/``ema``: weights (``ema`` None without an EMA); ``optimizer``: its ``state_dict``;
    ``rng``: rank 0's generator states (``cpu``, and ``cuda`` on a GPU); ``data``: the stream position
    (``epoch``, ``index``, ``accum``); ``pending_losses``: the log window's losses since the last
    ``metrics.csv`` line (a resumed run's next line averages the same steps); ``fingerprint``,
    ``lineage``, ``provenance``: what the run is, where its weights and components came from; ``stopped``:
    the record of a callback's stop at this step (``stopped at step N of M by ...``), else None.
    """

    step: int
    model: Mapping[str, Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, Tensor] = field(default_factory=dict)
    data: dict[str, int] = field(default_factory=dict)
    ema: Mapping[str, Tensor] | None = None
    ema_updates: int = 0
    finished: bool = False
    pending_losses: list[float] = field(default_factory=list)
    seed: int = 0
    world_size: int = 1
    fingerprint: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    stopped: dict[str, Any] | None = None

    def to_checkpoint(self) -> CheckpointData:
        """As the tensors and JSON a checkpoint directory holds (:mod:`fmkit.engine.checkpoint`)."""
        opt_t, opt_extra = optimizer_to_flat(self.optimizer)
        tensors = {"model": dict(self.model), "optimizer": opt_t, "rng": dict(self.rng)}
        if self.ema is not None:
            tensors["ema"] = dict(self.ema)
        meta = {"step": self.step, "finished": self.finished, "data": dict(self.data), "optimizer": opt_extra,
                "fingerprint": self.fingerprint, "seed": self.seed, "world_size": self.world_size,
                "ema_updates": self.ema_updates, "pending_losses": list(self.pending_losses),
                "params": {k: list(v.shape) for k, v in self.model.items()},
                "lineage": self.lineage, "provenance": self.provenance, "stopped": self.stopped}
        return CheckpointData(tensors, meta)

    @classmethod
    def from_checkpoint(cls, data: CheckpointData, where: str = "checkpoint") -> TrainState:
        """The state a checkpoint holds (as :func:`fmkit.engine.checkpoint.load_checkpoint` checked it)."""
        meta, t = data.meta, data.tensors
        step = int(meta["step"])
        try:
            optimizer = optimizer_from_flat(t.get("optimizer", {}), meta["optimizer"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the checkpoint's optimizer state is not readable: {exc}", where=where,
                                  fix="resume from another checkpoint of the run") from None
        return cls(step=step, model=t["model"], optimizer=optimizer, rng=dict(t.get("rng", {})),
                   data=dict(meta.get("data", {})), ema=t.get("ema"), ema_updates=int(meta.get("ema_updates", step)),
                   finished=bool(meta.get("finished", False)),
                   pending_losses=[float(v) for v in meta.get("pending_losses", [])], seed=int(meta.get("seed", 0)),
                   world_size=int(meta.get("world_size", 1)), fingerprint=dict(meta.get("fingerprint") or {}),
                   lineage=meta.get("lineage"), provenance=meta.get("provenance"), stopped=meta.get("stopped"))

    def check_fingerprint(self, ours: Mapping[str, Any], where: str, hints: FixHints) -> None:
        """Refuse a state of another configuration: every key either side recorded (a recipe's: model, data,
        path, source) must match ``ours``, each difference named; nothing is checked when ``ours`` is empty."""
        if ours:
            keys = tuple(dict.fromkeys([*ours, *self.fingerprint]))
            check_fingerprint(self.fingerprint, ours, where, sections=keys, ours_label=hints.fingerprint_label,
                              fix=hints.fingerprint)

    def load_optimizer(self, optimizer: torch.optim.Optimizer, where: str) -> None:
        """The optimizer's moments and step counts, in its parameters' memory layouts."""
        try:
            optimizer.load_state_dict(self.optimizer)
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"the optimizer state does not fit this model: {exc}", where=where,
                                  fix="resume with the recipe the run was started with") from None
        match_param_layouts(optimizer)

    def restore_rng(self, seed: int, rank: int, world_size: int, device: torch.device) -> None:
        """The random streams: rank 0's stored states on one process; under DDP (only rank 0's were
        stored) every rank re-derives its own from ``(seed, rank, step)``."""
        if "cpu" in self.rng and world_size == 1:
            torch.set_rng_state(self.rng["cpu"])
        else:
            torch.manual_seed(seed + 7919 * rank + 104729 * self.step)
        if "cuda" in self.rng and device.type == "cuda" and world_size == 1:
            torch.cuda.set_rng_state(self.rng["cuda"], device)


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """This process's generator states: ``cpu``, and ``cuda`` for a CUDA ``device``."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def load_model_state(model: nn.Module, state: Mapping[str, Tensor], where: str, fix: str | None = None) -> None:
    """Load weights, explaining any mismatch of names or shapes instead of a raw traceback."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + ", ".join(
                f"{k} {tuple(state[k].shape)} in checkpoint vs {tuple(own[k].shape)} in model" for k in wrong[:5]))
        if missing:
            parts.append(f"missing in checkpoint: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"not in this model: {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        raise CheckpointError("the checkpoint's weights do not fit this model (" + "; ".join(parts) + ")",
                              where=where,
                              fix=fix or "use the recipe the checkpoint was trained with (its run's recipe.yaml)")
    model.load_state_dict(dict(state))


# -- optimizer state <-> tensors + JSON ------------------------------------------------------
def optimizer_to_flat(sd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into safetensors tensors and a JSON-able remainder."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: dict[str, Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state_dict that :func:`optimizer_to_flat` split."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in extra.get("scalars", {}).items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": extra["param_groups"]}
