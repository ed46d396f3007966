"""A trained run loaded for inference — its recipe, components and a checkpoint's weights — and
what sampling from it needs: the device, a solver from the recipe or flags, a folder for the
samples, and a check that they are finite. Used by ``fmkit sample``, ``evaluate`` and ``reflow``,
and by benchmarks and plugins that sample from a run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

import torch

from fmkit.app.registry import get_registry as registry
from fmkit.errors import FmkitError
from fmkit.flow.state import PASSENGERS


class LoadedRun(NamedTuple):
    """``recipe``: the run's (with overrides); ``components``: built from it, the model holding the
    checkpoint's weights (EMA's when ``eval.use_ema``); ``checkpoint``: its folder (a model folder's
    own path for an exported model); ``data``: its contents (``meta["step"]``: the step trained)."""

    recipe: Any
    components: Any
    checkpoint: Path
    data: Any

    @property
    def step(self) -> int:
        return int(self.data.meta["step"])

    @property
    def stopped(self) -> str | None:
        """``stopped at step N of M by ...`` when a callback (a wall-clock guard) stopped the run at this checkpoint."""
        record = self.data.meta.get("stopped")
        return str(record.get("message")) if isinstance(record, dict) else None

    @property
    def label(self) -> str:
        """``step_000000040`` for a run's checkpoint, ``exported step 40`` for a model folder."""
        return self.checkpoint.name if self.checkpoint.name.startswith("step_") else f"exported step {self.step}"


def pick_checkpoint(run: Path, which: str | None) -> Path:
    """RUN's checkpoint to load: the newest verified one, or ``--checkpoint`` given as a step number
    or a checkpoint folder of RUN (a folder of another run would pair weights with the wrong recipe)."""
    from fmkit.engine.checkpoint import complete_checkpoints, resolve_checkpoint, step_dir_name

    if which is None:
        return resolve_checkpoint(run)
    root = run / "checkpoints"
    kept = complete_checkpoints(root)
    have = ", ".join(str(int(p.name.split("_")[-1])) for p in kept) or "none"
    ck = root / step_dir_name(int(which)) if which.isdigit() else Path(which)
    if ck.resolve() not in {p.resolve() for p in kept}:
        raise FmkitError(f"{which!r} is not a complete checkpoint of {run}", where="--checkpoint",
                         fix=f"give one of its kept steps ({have}) or a folder under {root}; "
                             "trainer.keep_checkpoints sets how many a run keeps")
    return ck  # verified when it is loaded

def load_for_inference(run: Path | str, set_: list[str] | None, which: str | None = None) -> LoadedRun:
    """RUN's recipe (with ``set_`` overrides), components and checkpoint (``which``: see :func:`pick_checkpoint`).
    RUN may also be a model folder (``fmkit export``) or ``hf://ORG/NAME[@REVISION]`` (one on the
    Hugging Face Hub, through its cache): its plugins are checked and its files verified first
    (:func:`fmkit.app.model_folder.open_model_folder`)."""
    from fmkit.app.hub import is_hub_ref
    from fmkit.app.model_folder import is_model_folder, weights_kind
    from fmkit.app.run import build_components, load_run_recipe
    from fmkit.engine.checkpoint import load_checkpoint, load_resolved

    if is_hub_ref(str(run)) or is_model_folder(Path(run)):
        if which is not None:
            raise FmkitError("a model folder holds one set of weights; --checkpoint picks one of a run's checkpoints",
                             where="--checkpoint", fix="drop --checkpoint, or export the checkpoint you want: "
                                                       "`fmkit export RUN DIR --checkpoint STEP`")
        return _load_model_folder(str(run), set_)
    run = Path(run)
    rec = load_run_recipe(run, set_ or [])
    note_resume_overrides(run)
    comps = build_components(rec)
    if which is None:  # the newest that loads (a damaged one is skipped with a note)
        ck, data = load_resolved(run)
    else:
        ck = pick_checkpoint(run, which)
        data = load_checkpoint(ck)
    _install_weights(comps.model, data.tensors[weights_kind(rec.eval.use_ema, data.tensors)], rec,
                     data.meta.get("fingerprint") or {}, str(ck),
                     fix="restore the run's recipe.yaml (drop --set for these keys), or use a checkpoint from this "
                         "recipe")
    return LoadedRun(rec, comps, ck, data)


def note_resume_overrides(run: Path) -> None:
    """A note when RUN was resumed with ``--set`` overrides beyond ``trainer.*``: ``sample`` and ``evaluate`` read
    its recipe.yaml, the recipe it was started with (a resume's overrides are settings of that training, kept
    in lineage.json)."""
    from fmkit.engine.lineage import LINEAGE_FILE, resume_overrides
    from fmkit.errors import note

    later = [o for o in resume_overrides(run) if not o.strip().startswith("trainer.")]
    if later:
        note(f"{run} was resumed with --set {' --set '.join(later)}; this command uses its recipe.yaml, the recipe "
             f"it was started with", where=str(run / LINEAGE_FILE), fix="pass the same --set here to use them")


def _load_model_folder(source: str, set_: list[str] | None) -> LoadedRun:
    """A model folder or ``hf://`` reference loaded as a run's checkpoint would be (``checkpoint``: the folder)."""
    from fmkit.app.model_folder import MODEL_FILE, open_model_folder
    from fmkit.app.run import build_components, load_run_recipe
    from fmkit.engine.checkpoint import CheckpointData

    folder, weights = open_model_folder(source)  # plugins checked, files verified: before anything is built
    rec = load_run_recipe(folder.path, set_ or [])
    comps = build_components(rec)
    _install_weights(comps.model, weights, rec, folder.meta.get("fingerprint") or {}, str(folder.path / MODEL_FILE),
                     fix="drop --set for these keys: the weights were trained with the folder's recipe.yaml")
    return LoadedRun(rec, comps, folder.path, CheckpointData({folder.meta.get("weights", "model"): weights},
                                                             {"step": folder.step}))


def _install_weights(model: torch.nn.Module, weights: dict, rec: Any, recorded: dict, where: str, fix: str) -> None:
    """Load ``weights`` into ``model`` once the ``recorded`` fingerprint of their recipe matches ``rec``'s:
    the model's output means what the path's prediction and the source say, so all three must match."""
    from fmkit.app.run import fingerprint
    from fmkit.engine.fingerprint import check_fingerprint
    from fmkit.engine.train_state import load_model_state

    check_fingerprint(recorded, fingerprint(rec), where, sections=("model", "path", "source"), fix=fix)
    load_model_state(model, weights, where)

def inference_device(rec: Any) -> torch.device:
    """The recipe's device; on a CPU also its ``trainer.cpu_threads`` (sampling runs the same network)."""
    from fmkit.engine.setup import pick_device, set_cpu_threads

    dev = pick_device(rec.trainer.device)
    if dev.type == "cpu":
        set_cpu_threads(rec.trainer)
    return dev


def build_solver(rec: Any, solver: str | None, steps: int | None, rtol: float | None = None,
            atol: float | None = None) -> tuple:
    """The solver to sample with: the recipe's, or ``--solver`` (with its defaults), with ``--steps``
    or ``--rtol``/``--atol`` on top; and a short description of it for tables (``euler, 50 steps``).

    Args:
        rec: the run's recipe (its ``solver`` section, and its ``objective`` to refuse a meanflow solver
            for a run that did not learn the average velocity).
        solver: the ``--solver`` name, replacing the recipe's solver and its options; None: the recipe's.
        steps: ``--steps`` (fixed-step solvers); None: the recipe's, or with ``solver`` that solver's default.
        rtol: ``--rtol`` (adaptive solvers); None: the recipe's, or with ``solver`` that solver's default.
        atol: ``--atol`` (adaptive solvers); None: the recipe's, or with ``solver`` that solver's default.

    Returns:
        ``(solver, description)``: the built :class:`~fmkit.flow.solvers.Solver` and its
        :func:`describe_solver` text.

    Raises:
        FmkitError: a flag the solver does not take, or solver meanflow for a run not trained by meanflow.
    """
    from fmkit.app.recipe import Component

    reg = registry()
    spec = rec.solver.spec()
    if solver:
        reg.get("solvers", solver, where="--solver")  # an unknown name: the closest match, by option
        spec = {"name": solver}
    flags = {"steps": ("--steps", steps), "rtol": ("--rtol", rtol), "atol": ("--atol", atol)}
    entry = reg.get("solvers", spec["name"], where="solver")
    fields = set(entry.options.model_fields) if entry.options is not None else set()
    for key, (flag, value) in flags.items():
        if value is None:
            continue
        if key not in fields:
            def takes(k: str) -> list[str]:
                return sorted(n for n, e in reg.entries("solvers").items()
                              if e.options is not None and k in e.options.model_fields)

            if key == "steps":
                fix = (f"--steps applies to fixed-step solvers ({', '.join(takes('steps'))}); an adaptive one such as "
                       f"{spec['name']!r} takes --rtol/--atol")
            else:
                fix = (f"{flag} applies to adaptive solvers ({', '.join(takes(key))}); a fixed-step one such as "
                       f"{spec['name']!r} takes --steps")
            raise FmkitError(f"solver {spec['name']!r} has no option {key!r}", where=flag, fix=fix)
        spec[key] = value
    if spec["name"] == "meanflow" and rec.objective.name != "meanflow":
        raise FmkitError(f"solver meanflow jumps with the average velocity u(z, r, t), which this run's objective "
                         f"{rec.objective.name!r} did not train", where="--solver",
                         fix="sample it with an ODE solver (euler, heun, dopri5, ...)")
    resolved = reg.resolve("solvers", Component(**spec).spec(), where="solver (with --solver/--steps/--rtol/--atol)")
    return reg.build("solvers", resolved, where="solver"), describe_solver(resolved)


def guided(model: torch.nn.Module, rec: Any, null_class: int | None, scale: float | None = None
           ) -> tuple[torch.nn.Module, float | None]:
    """The field a run samples: ``model`` under classifier-free guidance at ``scale`` (``--guidance``), else at
    the recipe's ``eval.guidance_scale``, through :func:`fmkit.flow.guidance.with_guidance` as the trainer's
    evaluation and ``fmkit reflow`` do; returns it and the scale used (None: unguided)."""
    from fmkit.flow.guidance import with_guidance

    where = "--guidance" if scale is not None else "eval.guidance_scale"
    scale = scale if scale is not None else rec.eval.guidance_scale
    if scale is not None and null_class is None:
        raise FmkitError(f"{where} needs a conditional dataset (labels in `cond`, and a null class)", where=where,
                         fix=f"drop {where}" if where == "--guidance" else "--set eval.guidance_scale=null")
    return with_guidance(model, scale, null_class), (None if scale is None else float(scale))


def sample_loaded(loaded: LoadedRun, n: int, solver: Any, device: torch.device, seed: int = 0,
                  guidance: float | None = None, cond: torch.Tensor | None = None) -> dict:
    """The ``n`` samples ``fmkit sample`` writes (CPU tensors): the run's model on ``device`` under its guidance
    (``guidance``: ``--guidance``; None: the recipe's), drawn in ``eval.chunk_size`` chunks with ``seed``
    by :func:`~fmkit.engine.evaluation.sample_in_chunks`, as the trainer's evaluation draws them; ``cond``:
    the class of every sample [n] (``--class``/``--per-class``), None: the data's."""
    from fmkit.engine.evaluation import sample_in_chunks

    rec, comps = loaded.recipe, loaded.components
    model, _ = guided(comps.model.to(device).eval(), rec, comps.dataset.info.null_class, guidance)
    torch.manual_seed(seed)
    return sample_in_chunks(model, comps.path, comps.source, solver, comps.dataset, n, rec.eval.chunk_size, device,
                            seed, cond=cond)


def describe_solver(spec: dict) -> str:
    """``euler, 50 steps`` or ``dopri5, rtol 1e-05, atol 1e-05`` (other options as key value)."""
    opts = {k: v for k, v in spec.items() if k != "name" and v is not None}
    parts = [spec["name"]] + [f"{v} steps" if k == "steps" else f"{k} {v}" for k, v in opts.items()]
    return ", ".join(parts)


def check_finite(samples: dict) -> None:
    """Refuse samples holding NaN/Inf: a diverged model's output is no result to write (exit 0 said it was)."""
    for k, v in samples.items():
        if k in PASSENGERS or not v.is_floating_point():
            continue
        bad = (~v.isfinite()).reshape(v.shape[0], -1).any(1)
        if bad.any():
            raise FmkitError(f"{int(bad.sum())} of {v.shape[0]} samples hold NaN/Inf in field {k!r}",
                             where="the model's velocity / the solver",
                             fix="the checkpoint's weights or the solver diverged: try another checkpoint "
                                 "(--checkpoint), more --steps, or check the run's loss curve (fmkit curves RUN)")


def samples_home(source: Path | str) -> Path:
    """Where ``fmkit sample`` puts its ``samples/`` folder: in RUN for a run; in the current directory
    for a model folder or ``hf://`` (an export stays as it was made, a Hub snapshot belongs to the cache)."""
    from fmkit.app.hub import is_hub_ref
    from fmkit.app.model_folder import is_model_folder

    return Path(".") if is_hub_ref(str(source)) or is_model_folder(Path(source)) else Path(source)


def sample_dir(run: Path, out: str | None, overwrite: bool) -> Path:
    """The folder to write samples into, made before sampling: ``--out`` inside RUN/samples (refused
    when it holds files, unless ``--overwrite``), or a new ``cli-<time>[-N]`` folder."""
    from fmkit.app.run import safe_output_path
    from fmkit.errors import OutputError

    base = run / "samples"
    if out is None:
        stem = f"cli-{time.strftime('%Y%m%d-%H%M%S')}"
        out_dir, i = safe_output_path(base, stem), 1
        while out_dir.exists():
            i += 1
            out_dir = safe_output_path(base, f"{stem}-{i}")
    else:
        out_dir = safe_output_path(base, out)
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
            raise OutputError(f"{out_dir} already exists and is not empty", where="--out",
                              fix="pick another --out name, or pass --overwrite to write into it (files of the same "
                                  "names are replaced)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the sample folder {out_dir}: {exc.strerror or exc}", where="--out",
                          fix="pick another --out name") from None
    return out_dir
