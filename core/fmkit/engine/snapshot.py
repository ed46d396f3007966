"""What a checkpoint of a :class:`~fmkit.engine.trainer.Trainer` holds — weights, EMA, optimizer,
RNG, data position, log window, lineage — and how a trainer is restored from one, exactly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fmkit.engine import checkpoint as ckpt
from fmkit.engine.fingerprint import check_fingerprint
from fmkit.engine.optim import match_param_layouts
from fmkit.engine.stream import resume_index
from fmkit.errors import CheckpointError

if TYPE_CHECKING:
    from fmkit.engine.trainer import Trainer


def capture(tr: Trainer, pending: list[float] | None = None) -> ckpt.CheckpointData:
    """What a checkpoint of ``tr`` holds; ``pending``: the current log window's losses (default this rank's)."""
    opt_t, opt_extra = optimizer_to_flat(tr.optimizer.state_dict())
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and tr.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(tr.device)
    tensors = {"model": dict(tr.model.state_dict()), "optimizer": opt_t, "rng": rng}
    if tr.ema is not None:
        tensors["ema"] = dict(tr.ema.model.state_dict())
    meta = {"step": tr.step, "finished": tr.finished, "data": tr.stream.position(),
            "optimizer": opt_extra, "fingerprint": tr.fingerprint, "seed": tr.seed,
            "world_size": tr.dist.world_size,
            "ema_updates": tr.ema.num_updates if tr.ema is not None else 0,
            # a stop between log steps: the resumed run's next log line averages the same steps
            "pending_losses": pending if pending is not None else [float(v) for v in tr.pending],
            "params": {k: list(v.shape) for k, v in tr.model.state_dict().items()},
            "lineage": tr.lineage, "provenance": tr.provenance}
    return ckpt.CheckpointData(tensors, meta)


def restore(tr: Trainer, data: ckpt.CheckpointData, where: str = "checkpoint") -> None:
    """Put ``tr`` in the state ``data`` was captured in (its fingerprint and weights checked first)."""
    meta = data.meta
    theirs = meta.get("fingerprint") or {}
    hints = tr.hints
    if tr.fingerprint:  # every key either side recorded (a recipe's: model, data, path, source), each named
        keys = tuple(dict.fromkeys([*tr.fingerprint, *theirs]))
        check_fingerprint(theirs, tr.fingerprint, where, sections=keys, ours_label=hints.fingerprint_label,
                               fix=hints.fingerprint)
    load_model_state(tr.model, data.tensors["model"], where, fix=hints.model)
    if tr.ema is not None:
        load_model_state(tr.ema.model, data.tensors.get("ema", data.tensors["model"]), where, fix=hints.model)
        tr.ema.num_updates = int(meta.get("ema_updates", meta["step"]))
    try:
        tr.optimizer.load_state_dict(optimizer_from_flat(data.tensors.get("optimizer", {}), meta["optimizer"]))
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"the optimizer state does not fit this model: {exc}", where=where,
                              fix="resume with the recipe the run was started with") from None
    match_param_layouts(tr.optimizer)
    rng = data.tensors.get("rng", {})
    if "cpu" in rng and tr.dist.world_size == 1:
        torch.set_rng_state(rng["cpu"])
    else:
        torch.manual_seed(tr.seed + 7919 * tr.dist.rank + 104729 * int(meta["step"]))
    if "cuda" in rng and tr.device.type == "cuda" and tr.dist.world_size == 1:
        torch.cuda.set_rng_state(rng["cuda"], tr.device)
    tr.step = int(meta["step"])
    tr.finished = bool(meta.get("finished", False))
    tr.lineage = meta.get("lineage", tr.lineage)
    tr.pending = [torch.tensor(v, dtype=torch.float32, device=tr.device) for v in meta.get("pending_losses", [])]
    pos = meta.get("data", {})
    tr.restart_stream(int(pos.get("epoch", 0)), resume_index(pos, tr.opts.grad_accum))


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
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in extra.get("scalars", {}).items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": extra["param_groups"]}
