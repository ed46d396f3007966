"""The model card of an exported model (``README.md``): Hugging Face metadata front matter and a
page that states only what the run recorded — its final evaluation's metrics from ``metrics.csv``,
with the protocol they were measured under (samples, seed, solver and its NFE, which weights,
guidance, the metrics' options) and the command that measures them again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: the seed the Trainer's evaluation samples with (``Trainer.sample``'s default), and ``fmkit evaluate``'s
EVAL_SEED = 0


def measured_evaluation(run: Path, step: int, recipe: Any, weights: str) -> dict[str, Any] | None:
    """What the run's evaluation at ``step`` measured (the ``eval/*`` rows of its ``metrics.csv``) and
    under which protocol; None when no evaluation of that step was recorded."""
    from fmkit.app.inference import describe_solver
    from fmkit.engine.metrics_log import read_metrics

    metrics = {name[len("eval/"):]: value for name, rows in read_metrics(run).items() if name.startswith("eval/")
               for s, value in rows if s == step}
    if not metrics:
        return None
    solver = recipe.solver.spec()
    return {"step": step, "metrics": metrics, "num_samples": recipe.eval.num_samples, "seed": EVAL_SEED,
            "solver": describe_solver(solver), "nfe": fixed_nfe(solver), "weights": weights,
            "guidance_scale": recipe.eval.guidance_scale, "metric_options": [m.spec() for m in recipe.eval.metrics]}


def fixed_nfe(spec: dict[str, Any]) -> int | None:
    """The function evaluations per sample of a fixed-step solver, counted by the solver itself on a
    zero velocity (an adaptive solver's NFE depends on the model: None)."""
    import torch

    from fmkit.app.registry import get_registry
    from fmkit.flow.solvers import FixedStepSolver

    solver = get_registry().build("solvers", spec, where="solver")
    if not isinstance(solver, FixedStepSolver):
        return None
    return solver.solve(lambda x, t: torch.zeros_like(x), torch.zeros(1, 1)).nfe


def render_card(meta: dict[str, Any], recipe: Any, *, license: str, pipeline_tag: str | None, repo_id: str | None,
                folder_name: str, picture: str | None) -> str:
    """``README.md`` of a model folder whose ``fmkit.json`` is ``meta``.

    Args:
        meta: the folder's ``fmkit.json`` (step, weights, provenance, evaluation).
        recipe: the run's validated recipe.
        license: a Hugging Face license id (``apache-2.0``, ``mit``, ``other``, ...).
        pipeline_tag: the Hub's task for the model, or None.
        repo_id: ``ORG/NAME`` when it is known (``fmkit push``), for the commands shown.
        folder_name: the folder's name, for the commands shown when there is no repo_id.
        picture: the sample picture's file name in the folder, or None.

    Returns:
        The card: YAML front matter, then Markdown.
    """
    ref = f"hf://{repo_id}" if repo_id else f"./{folder_name}"
    dists = _distributions(meta)
    front: dict[str, Any] = {"library_name": "fmkit", "license": license,
                             "tags": list(dict.fromkeys(["fmkit", "flow-matching", recipe.data.name, recipe.model.name,
                                                         *[d for d in dists if d != "fmkit"]]))}
    if pipeline_tag:
        front["pipeline_tag"] = pipeline_tag
    title = repo_id.split("/", 1)[1] if repo_id else recipe.name
    weights = "its EMA weights" if meta["weights"] == "ema" else \
        "its weights (the run kept no EMA, or samples without it)"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {title}", "",
             f"A flow-matching model trained with fmkit: recipe `{recipe.name}` (data `{recipe.data.name}`, model "
             f"`{recipe.model.name}`, path `{recipe.path.name}`, source `{recipe.source.name}`, coupling "
             f"`{recipe.coupling.name}`), {meta['step']:,} training steps; this folder holds {weights} "
             f"({meta['parameters']:,} parameters).", ""]
    if picture:
        lines += [f"![samples of the run's evaluation at step {meta['step']}]({picture})", ""]
    pip = " ".join(["'fmkit[hub]'", *[d for d in dists if d != "fmkit"]])
    lines += ["## Use", "", "```bash", f"pip install {pip}", f"fmkit sample {ref} -n 1000", f"fmkit evaluate {ref}",
              "```", "",
              "Sampling builds the recipe's dataset (generated samples copy its sizes and labels), so a dataset "
              "that reads files needs them where the model is used (see the plugin's documentation).", ""]
    lines += _evaluation(meta.get("evaluation"), ref)
    lines += ["## Training", "", f"`recipe.yaml` is the run's resolved recipe: `fmkit train recipe.yaml` trains "
              "it again.", ""]
    prov = meta.get("provenance") or {}
    if prov:
        versions = ", ".join(f"{k} {prov[k]}" for k in ("fmkit", "torch", "python") if prov.get(k))
        lines += [f"Made with {versions}." if versions else "", "", "| component | plugin | distribution |",
                  "|---|---|---|"]
        for key, made in (prov.get("components") or {}).items():
            dist = f"{made['distribution']} {made.get('version') or ''}".strip() if made.get("distribution") else "-"
            lines.append(f"| `{key}` | {made.get('plugin')} | {dist} |")
        lines.append("")
    return "\n".join(lines)


def _evaluation(ev: dict[str, Any] | None, ref: str) -> list[str]:
    out = ["## Evaluation", ""]
    if not ev:
        return out + ["The run recorded no evaluation of these weights; measure them with "
                      f"`fmkit evaluate {ref}`.", ""]
    out += [f"Measured by the run's evaluation at step {ev['step']:,} (its `metrics.csv`):", "",
            "| metric | value |", "|---|---:|"]
    out += [f"| {name} | {value:.4f} |" for name, value in ev["metrics"].items()]
    nfe = f" ({ev['nfe']} function evaluations per sample)" if ev.get("nfe") else " (adaptive: the NFE varies)"
    weights = "EMA weights" if ev["weights"] == "ema" else "raw weights"
    guidance = f"classifier-free guidance scale {ev['guidance_scale']:g} (conditional data)" \
        if ev.get("guidance_scale") is not None else "no guidance"
    opts = "; ".join(f"{m['name']}" + (f" ({', '.join(f'{k} {v}' for k, v in m.items() if k != 'name')})"
                                        if len(m) > 1 else "") for m in ev.get("metric_options") or [])
    out += ["", f"Protocol: {ev['num_samples']:,} samples drawn with seed {ev['seed']}, solver {ev['solver']}{nfe}, "
                f"{weights}, {guidance}" + (f"; metrics: {opts}." if opts else "."), "",
            f"Measure again: `fmkit evaluate {ref}` draws the same samples (on the same kind of device) and scores "
            "them with the same metrics.", ""]
    return out


def _distributions(meta: dict[str, Any]) -> list[str]:
    """The distributions that made the model's components, fmkit first."""
    comps = ((meta.get("provenance") or {}).get("components") or {}).values()
    return list(dict.fromkeys(["fmkit", *[str(c["distribution"]) for c in comps if c.get("distribution")]]))
