"""``fmkit plugins``, ``curves`` and ``recipe validate|show|list``: looking at what is installed and what ran."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from fmkit.app.cli.common import _STATE, SetOpt, app, console, err_console, recipe_app, registry
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
    as_json: Annotated[bool, typer.Option("--json", help="everything as one JSON document (for tools)")] = False,
) -> None:
    """The installed plugins (distribution, version, hooks; those that failed to load, with file:line),
    then every registered component, its kind and the plugin that gave it."""
    from fmkit.app.component_options import describe_options
    from fmkit.app.components import singular

    reg = registry()
    kinds = reg.kinds()  # the core's and those plugins declare (the audio plugin's vocoders)
    if kind is not None:
        by_name = {**{singular(k): k for k in kinds}, **{k: k for k in kinds}}
        if kind not in by_name:
            import difflib

            close = difflib.get_close_matches(kind, kinds, n=1)
            raise FmkitError(f"unknown component kind {kind!r}", where="--kind",
                             fix=(f"did you mean {close[0]!r}? " if close else "") + f"use one of: {', '.join(kinds)}")
        kinds = (by_name[kind],)
    components = [(k, name, e) for k in kinds for name, e in sorted(reg.entries(k).items())]
    infos = reg.plugin_infos()
    if as_json:
        import json

        doc = {"plugins": [i.as_dict() for i in infos],
               "broken": [{k: v for k, v in b.as_dict().items() if k != "traceback" or _STATE["debug"]}
                          for b in reg.broken.values()],
               "disabled": reg.disabled,
               "components": [{"kind": singular(k), "name": n, "plugin": e.plugin, "description": e.description,
                               **({"options": describe_options(e.options) if e.options else None} if options else {})}
                              for k, n, e in components],
               "recipes": {n: {"path": str(p), "plugin": pl} for n, (p, pl) in sorted(reg.recipes().items())}}
        print(json.dumps(doc, indent=2))
        return
    if kind is None:
        counts = {i.name: sum(1 for _, _, e in components if e.plugin == i.name) for i in infos}
        ptable = Table(title="fmkit plugins")
        for col in ("plugin", "distribution", "version", "components", "hooks"):
            ptable.add_column(col)
        for i in infos:
            hooks = ", ".join(h.removeprefix("register_") for h in i.hooks) or "(none: it registers nothing)"
            ptable.add_row(i.name, i.distribution or "-", i.version or "-", str(counts[i.name]), hooks)
        console.print(ptable)
        for b in reg.broken.values():
            err_console.print(f"[bold red]not loaded:[/] {escape(b.summary())}\n  fix:   {escape(b.fix())}",
                              highlight=False, soft_wrap=True)
            if _STATE["debug"] and b.traceback:
                err_console.print(escape(b.traceback), highlight=False, soft_wrap=True)
        for name, why in sorted(reg.disabled.items()):
            console.print(f"disabled: plugin {name!r} ({why})", highlight=False)
    table = Table(title="fmkit components")
    for col in ("kind", "name", "plugin", "description") + (("options",) if options else ()):
        table.add_column(col)
    for k, name, e in components:
        row = [singular(k), name, e.plugin, e.description or "(no description)"]
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


@app.command("new-plugin")
def new_plugin(
    name: Annotated[str, typer.Argument(help="plugin name, a lower-case identifier (package fmkit_NAME)")],
    kind: Annotated[str, typer.Option("--kind", help="dataset, model, path, coupling, metric or writer")] = "dataset",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="folder to create (default ./fmkit-NAME)")] = None,
) -> None:
    """Scaffold a plugin package (pyproject, one example component, a recipe, a test) that installs
    with `pip install -e` and passes its own test unchanged."""
    from fmkit.app.scaffold import scaffold

    dest = out or Path(f"fmkit-{name.replace('_', '-')}")
    files = scaffold(name, kind, dest)
    console.print(f"wrote {len(files)} files into {dest}:", highlight=False)
    for f in files:
        console.print(f"  {f.relative_to(dest)}", highlight=False)
    console.print(f"next: pip install -e {dest} && fmkit plugins && fmkit train {name}_demo && pytest {dest}/tests",
                  highlight=False)
