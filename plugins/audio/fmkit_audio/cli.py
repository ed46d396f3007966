"""``fmkit audio ...`` sub-commands (added through the ``register_commands(app)`` hook)."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

app = typer.Typer(help="audio plugin: the digit classifier that judges samples", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Audio plugin commands."""


def metric_options(recipe):
    """The options of the recipe's ``audio_digits`` metric (its defaults when it has none), so the command
    trains exactly the classifier, and computes the vocoded ceiling, that the recipe's evaluation reads from
    the cache."""
    from fmkit_audio.metrics import AudioDigitsOptions

    spec = next((m.spec() for m in recipe.eval.metrics if m.name == "audio_digits"), {"name": "audio_digits"})
    return AudioDigitsOptions.model_validate({k: v for k, v in spec.items() if k != "name"})


# A "\f" in a command's docstring ends its --help text (click): the Args: after it are for readers of the code.
@app.command("train-classifier")
def train_classifier_cmd(
    recipe: Annotated[str, typer.Argument(help="recipe file or shipped recipe name: its data section is used")]
    = "audio_digits_cpu",
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a recipe key, e.g. data.limit=100")]
    = None,
    epochs: Annotated[Optional[int], typer.Option(min=1, help="default: the recipe's audio_digits metric's")] = None,
    seed: Annotated[Optional[int], typer.Option(help="default: the recipe's audio_digits metric's (0)")] = None,
    force: Annotated[bool, typer.Option(help="retrain even if cached")] = False,
) -> None:
    """Train the digit classifier of the audio_digits metric on the recipe's data (fixed seed), cache its
    weights where the metric reads them, and print its real test accuracy on the mels and after the
    metric's mel -> vocoder -> mel round trip (the ceilings of digit_acc_mel and digit_acc_vocoded).\f

    Args:
        recipe: RECIPE, a recipe file or shipped recipe name whose data section is used.
        set_: ``--set key.path=value`` recipe overrides.
        epochs: ``--epochs``; None: those of the recipe's audio_digits metric.
        seed: ``--seed``; None: that of the recipe's audio_digits metric.
        force: ``--force``, retrain even when cached.
    """
    from fmkit.plugin import get_registry, load_recipe

    from fmkit_audio.classifier import train_classifier
    from fmkit_audio.metrics import AudioDigitsMetric

    rec = load_recipe(recipe, set_ or [])
    dataset = get_registry().build("datasets", rec.data.spec(), where="data")
    opts = metric_options(rec)
    e, s = epochs or opts.classifier_epochs, opts.seed if seed is None else seed
    t0 = time.monotonic()
    clf = train_classifier(dataset, epochs=e, seed=s, force=force, log=typer.echo, progress=True)
    n_test = int(dataset.split_state("reference")["mel"].shape[0])
    typer.echo(f"{'trained' if clf.trained else 'cached'}: {clf.path} ({time.monotonic() - t0:.1f} s; "
               f"{e} epochs, seed {s}, {len(dataset)} training clips)")
    typer.echo(f"test accuracy: {clf.test_accuracy:.4f} ({n_test} {dataset.ref_split} clips)")
    ceiling = AudioDigitsMetric(e, s, opts.vocoder, classifier=clf).vocoded_ceiling(dataset)
    if ceiling is not None:
        name = opts.vocoder["name"] if isinstance(opts.vocoder, dict) else opts.vocoder
        typer.echo(f"test accuracy after mel -> {name} -> mel: {ceiling:.4f} (the vocoded ceiling; cached)")


@app.command("vocoders")
def vocoders_cmd() -> None:
    """List the registered vocoders (the audio plugin's own kind, also in `fmkit plugins --kind vocoders`)
    with the plugin of each and its options."""
    from fmkit.plugin import get_registry

    from fmkit_audio.vocoders import KIND

    for name, e in sorted(get_registry().entries(KIND).items()):
        opts = ", ".join(f"{k}={f.default!r}" for k, f in e.options.model_fields.items()) if e.options else "-"
        typer.echo(f"{name:16s} {e.plugin:16s} {e.description}  [options: {opts}]")
