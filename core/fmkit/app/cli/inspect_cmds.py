"""``fmkit plugins``, ``curves`` and ``recipe validate|show|list``: looking at what is installed and what ran."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fmkit.app.cli.common import SetOpt, app, console, recipe_app, registry
from fmkit.errors import FmkitError


@app.command()
def curves(
    run: Annotated[Path, typer.Argument(help="run directory")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="image file (default RUN/curves.png)")] = None,
    smoothing: Annotated[float, typer.Option("--smoothing", help="EMA weight for the loss, in [0, 1)")] = 0.8,
) -> None:
    """Draw a run's training curves (loss, lr, grad norm, throughput, eval metrics) as a PNG."""
    from fmkit.engine.curves import plot_curves

    path = plot_curves(run, out, smoothing=smoothing)
    console.print(f"wrote {path}", highlight=False)


@app.command()
def plugins(
    kind: Annotated[Optional[str], typer.Option("--kind", "-k", help="only this kind (models, datasets, ...)")] = None,
    options: Annotated[bool, typer.Option("--options", help="also each component's options: type and default")]
    = False,
) -> None:
    """Every registered component, its kind and the plugin that gave it (with --options, its options)."""
    from fmkit.app.component_options import describe_options
    from fmkit.app.hookspecs import KINDS

    reg = registry()
    kinds = KINDS
    if kind is not None:
        singular = {k[:-1]: k for k in KINDS}
        if kind not in KINDS and kind not in singular:
            import difflib

            close = difflib.get_close_matches(kind, KINDS, n=1)
            raise FmkitError(f"unknown component kind {kind!r}", where="--kind",
                             fix=(f"did you mean {close[0]!r}? " if close else "") + f"use one of: {', '.join(KINDS)}")
        kinds = (singular.get(kind, kind),)
    table = Table(title="fmkit components")
    for col in ("kind", "name", "plugin", "description") + (("options",) if options else ()):
        table.add_column(col)
    for k in kinds:
        for name, e in sorted(reg.entries(k).items()):
            row = [k[:-1], name, e.plugin, e.description]
            if options:
                row.append(describe_options(e.options) if e.options is not None else "(none)")
            table.add_row(*row)
    console.print(table)
    rec = reg.recipes()
    if rec and kind is None:
        console.print("recipes shipped by plugins: " + ", ".join(f"{k} ({p})" for k, (_, p) in sorted(rec.items())))


@recipe_app.command("validate")
def recipe_validate(recipe: Annotated[Path, typer.Argument()], set_: SetOpt = None) -> None:
    """Check a recipe (structure and every component's options)."""
    from fmkit.app.recipe import load_recipe

    load_recipe(recipe, set_ or [])
    console.print(f"[green]ok[/]: {recipe} is a valid recipe")


@recipe_app.command("show")
def recipe_show(recipe: Annotated[Path, typer.Argument()], set_: SetOpt = None) -> None:
    """Print the resolved recipe, every default filled in."""
    from fmkit.app.recipe import load_recipe

    console.print(load_recipe(recipe, set_ or []).to_yaml(), markup=False, highlight=False)


@recipe_app.command("list")
def recipe_list() -> None:
    """Recipes shipped by installed plugins."""
    for name, (p, plugin) in sorted(registry().recipes().items()):
        console.print(f"{name}\t{p}\t({plugin})")
