"""``fmkit export`` and ``push``: a trained run as a model folder others can load (docs/sharing.md)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from fmkit.app.cli.common import CheckpointOpt, app, console

LicenseOpt = Annotated[str, typer.Option("--license", help="license id for the model card's metadata (Hugging Face "
                                         "ids: apache-2.0, mit, cc-by-4.0, ...; 'other' when unsure)")]
TaskOpt = Annotated[Optional[str], typer.Option("--pipeline-tag", help="the Hub's task for the card's metadata "
                                                "(e.g. unconditional-image-generation); none by default")]


# A "\f" in a command's docstring ends its --help text (click): the Args: after it are for readers of the code.
@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="run directory")],
    out: Annotated[Path, typer.Argument(help="model folder to write (new or empty)")],
    checkpoint: CheckpointOpt = None,
    license: LicenseOpt = "other",
    pipeline_tag: TaskOpt = None,
    repo_id: Annotated[Optional[str], typer.Option("--repo-id", metavar="ORG/NAME", help="the Hub repository it is "
                                                   "meant for: its card then shows hf://ORG/NAME")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an earlier export in OUT")] = False,
) -> None:
    """Write a run's weights as a self-contained model folder: model.safetensors, recipe, provenance, card.\f

    Args:
        run: RUN, the run directory.
        out: OUT, the model folder to write (new or empty).
        checkpoint: ``--checkpoint``, an older checkpoint's step or folder; None: the newest.
        license: ``--license``, the license id in the model card's metadata.
        pipeline_tag: ``--pipeline-tag``, the Hub's task in the card's metadata; None: none.
        repo_id: ``--repo-id ORG/NAME`` the folder is meant for, shown in its card; None: none.
        overwrite: ``--overwrite``, replace an earlier export in OUT.
    """
    from fmkit.app.export import export_run
    from fmkit.app.hub import check_repo_id

    if repo_id is not None:
        check_repo_id(repo_id, where="--repo-id")
    done = export_run(run, out, checkpoint=checkpoint, license=license, pipeline_tag=pipeline_tag, repo_id=repo_id,
                      overwrite=overwrite)
    measured = ", ".join(f"{k} {v:.4f}" for k, v in done.metrics.items()) or "no evaluation recorded at this step"
    console.print(f"exported step {done.step} of {run} ({measured}) to {done.path}:", highlight=False)
    for f in done.files:
        console.print(f"  {f.name}  ({_size(f.stat().st_size)})", highlight=False)
    console.print(f"load it with `fmkit sample {done.path}`; share it with `fmkit push {done.path} ORG/NAME`",
                  highlight=False)


@app.command()
def push(
    run: Annotated[Path, typer.Argument(help="run directory (exported on the fly) or model folder (fmkit export)")],
    repo_id: Annotated[str, typer.Argument(metavar="ORG/NAME", help="Hugging Face model repository (made if new)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be uploaded; nothing is sent")] = False,
    private: Annotated[bool, typer.Option("--private", help="make a new repository private")] = False,
    revision: Annotated[Optional[str], typer.Option("--revision", help="branch to commit to (made if new; default "
                                                    "main)")] = None,
    checkpoint: CheckpointOpt = None,
    license: LicenseOpt = "other",
    pipeline_tag: TaskOpt = None,
) -> None:
    """Upload a run (or an exported model folder) to the Hugging Face Hub with huggingface_hub.\f

    Args:
        run: RUN, a run directory (exported on the fly) or a model folder (``fmkit export``).
        repo_id: ORG/NAME, the Hub model repository (made if new).
        dry_run: ``--dry-run``, list what would be uploaded and send nothing.
        private: ``--private``, make a new repository private.
        revision: ``--revision``, the branch to commit to (made if new); None: main.
        checkpoint: ``--checkpoint`` of a run, an older checkpoint's step or folder; None: the newest.
        license: ``--license``, the license id in the model card's metadata (a run exported on the fly).
        pipeline_tag: ``--pipeline-tag``, the Hub's task in the card's metadata; None: none.
    """
    from fmkit.app.export import export_run
    from fmkit.app.hub import check_repo_id, require_hub, upload
    from fmkit.app.model_folder import is_model_folder

    check_repo_id(repo_id, where="ORG/NAME")
    if not dry_run:
        require_hub("fmkit push")  # before exporting: a missing package must not cost the export
    tmp = None
    try:
        if is_model_folder(run):
            folder, step = run, None
        else:
            tmp = Path(tempfile.mkdtemp(prefix="fmkit-push-"))
            done = export_run(run, tmp / repo_id.split("/", 1)[1], checkpoint=checkpoint, license=license,
                              pipeline_tag=pipeline_tag, repo_id=repo_id)
            folder, step = done.path, done.step
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        where = f"https://huggingface.co/{repo_id}" + (f" (branch {revision})" if revision else "")
        what = f"step {step} of {run}" if step is not None else str(run)
        if dry_run:
            console.print(f"would upload {what} to {where}, {len(files)} files:", highlight=False)
            for f in files:
                console.print(f"  {f.name}  ({_size(f.stat().st_size)})", highlight=False)
            console.print(f"then: fmkit sample hf://{repo_id}" + (f"@{revision}" if revision else ""), highlight=False)
            return
        url = upload(folder, repo_id, private=private, revision=revision,
                     message=f"fmkit push: {what}")
        console.print(f"uploaded {len(files)} files to {where}: {url}", highlight=False)
        console.print(f"load it with `fmkit sample hf://{repo_id}" + (f"@{revision}`" if revision else "`"),
                      highlight=False)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
