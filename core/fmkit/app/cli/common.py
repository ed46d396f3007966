"""What every ``fmkit`` sub-command shares: the typer apps, the consoles, common options, tables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="fmkit: flow matching from YAML recipes.")
recipe_app = typer.Typer(no_args_is_help=True, help="Validate and inspect recipes.")
app.add_typer(recipe_app, name="recipe")
console = Console()
err_console = Console(stderr=True)
_STATE = {"debug": os.environ.get("FMKIT_DEBUG", "") not in ("", "0")}

#: the most samples one `fmkit sample` makes (they are held in memory to be written): 10^7 2-D points
#: are 80 MB; more is a typo such as -n 1000000000000
MAX_SAMPLES = 10_000_000

SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override: key.path=value (repeatable)")]
GuidanceOpt = Annotated[Optional[float], typer.Option(
    "--guidance", help="classifier-free guidance scale (default: the recipe's eval.guidance_scale; 1 = plain "
    "conditional, 0 = unconditional)")]
ClassOpt = Annotated[Optional[list[str]], typer.Option(
    "--class", metavar="D", help="samples of class D only (repeatable, or a comma list 1,7: the samples are shared "
    "evenly, in class order); conditional runs")]
PerClassOpt = Annotated[Optional[int], typer.Option(
    "--per-class", metavar="K", min=1, help="K samples of every class, in class order (n = K x classes; -n, if "
    "given, must agree); conditional runs")]
CheckpointOpt = Annotated[Optional[str], typer.Option(
    "--checkpoint", "-c", metavar="STEP|DIR",
    help="an older checkpoint of RUN: its step (as in checkpoints/step_*) or its folder (default: the newest)")]


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    if debug:
        _STATE["debug"] = True


def registry():
    from fmkit.app.registry import get_registry

    return get_registry()


def print_tables(title: str, rows: list[tuple[str, str]], metrics) -> None:
    """``rows`` as one table titled ``title``, plus a table of each protocol a metric declares."""
    from fmkit.app.builtin.metrics import metric_tables

    for sub, group in metric_tables(rows, metrics):
        head = sub or title
        table = Table(title=head, min_width=min(len(head) + 2, 120))  # rich wraps a title wider than the table
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in group:
            table.add_row(k, v)
        console.print(table)


def print_eval(run_dir: Path, metrics=()) -> None:
    """The run's last evaluation from its metrics.csv, titled with its step, and with "stopped at step N of M
    by ..." when a callback (a wall-clock guard) stopped the run there (its stopped.json)."""
    from fmkit.engine.metrics_log import read_metrics
    from fmkit.engine.stopping import read_stop

    m = read_metrics(run_dir)
    ev = {k[5:]: v[-1] for k, v in m.items() if k.startswith("eval/")}
    if ev:  # in the recipe's metric order, as `fmkit evaluate` prints them
        step, stop = max(s for s, _ in ev.values()), read_stop(run_dir)
        stopped = f" — {stop['message']}" if stop is not None and stop["step"] == step else ""
        print_tables(f"evaluation at step {step}{stopped}", [(k, f"{v:.4f}") for k, (_, v) in ev.items()], metrics)
