"""``fmkit image ...`` sub-commands (added through the ``register_commands(app)`` hook)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="image plugin: classifier for sample quality", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Image plugin commands."""


# A "\f" in a command's docstring ends its --help text (click): the Args: after it are for readers of the code.
@app.command("train-classifier")
def train_classifier_cmd(
    dataset: Annotated[str, typer.Option(help="mnist, fashion_mnist or cifar10")] = "mnist",
    root: Annotated[Optional[str], typer.Option(help="data folder (default $FMKIT_DATA_DIR/<dataset>)")] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 2,
    limit: Annotated[Optional[int], typer.Option(min=1, help="first N training images only")] = None,
    out: Annotated[Optional[Path], typer.Option(help="weights file (default: the cache the metric reads)")] = None,
    force: Annotated[bool, typer.Option(help="retrain even if cached")] = False,
    device: Annotated[str, typer.Option(help="where to train it: cpu or cuda (the metric runs it on the CPU)")] = "cpu",
) -> None:
    """Train the small CNN that judges samples (seed 0), cache its weights, print its real test accuracy.\f

    Args:
        dataset: ``--dataset``: mnist, fashion_mnist or cifar10.
        root: ``--root``, the data folder; None: ``$FMKIT_DATA_DIR/<dataset>``.
        epochs: ``--epochs``, passes over the training images.
        limit: ``--limit``, the first N training images only; None: all.
        out: ``--out``, the weights file; None: the cache the metric reads.
        force: ``--force``, retrain even when cached.
        device: ``--device`` to train on, cpu or cuda (the metric runs it on the CPU).
    """
    import torch

    from fmkit_image import data as d
    from fmkit_image.classifier import load_classifier, predict, save_classifier, train_classifier, weights_path

    builders = {"mnist": d.build_mnist, "fashion_mnist": d.build_fashion_mnist, "cifar10": d.build_cifar10}
    if dataset not in builders:
        from fmkit.plugin import RecipeError

        raise RecipeError(f"unknown dataset {dataset!r}", where="--dataset", fix=f"use one of {', '.join(builders)}")
    ds = builders[dataset](root=root, limit=limit)
    c, k = ds.info.fields["x"].shape[0], ds.info.num_cond_classes
    path = out or weights_path(ds.name, c, k)
    t0 = time.monotonic()
    if path.is_file() and not force:
        net = load_classifier(path, c, k)
        done = f"cached: {path}"
    else:
        torch.set_num_threads(max(1, torch.get_num_threads()))
        net = train_classifier(ds.scale(ds.images), ds.labels, k, epochs=epochs, device=device, progress=True)
        save_classifier(net, path)
        done = (f"trained: {path} ({time.monotonic() - t0:.0f} s; {epochs} epochs, seed 0, "
                f"{len(ds.images)} training images)")
    typer.echo(done)
    tx, ty = ds.split("test")
    logits, _ = predict(net, ds.scale(tx))
    typer.echo(f"test accuracy: {(logits.argmax(1) == ty).float().mean().item():.4f} ({len(tx)} images)")
