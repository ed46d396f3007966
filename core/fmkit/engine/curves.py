"""Training curves of a run as one picture: ``metrics.csv`` -> ``curves.png``.

One panel per logged quantity: the loss (each logged window's mean, and an exponential moving
average of it), learning rate, gradient norm, throughput, and every ``eval/*`` metric against the
training step. Read-only on the run: any run directory with a ``metrics.csv`` will do, finished,
interrupted or still training.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from fmkit.engine.metrics_log import read_metrics
from fmkit.errors import FmkitError, OutputError

CURVES_FILE = "curves.png"
# panel order; any other name (a callback's trainer.log) follows, then the eval/ metrics
_FIRST = ("loss", "lr", "grad_norm", "steps_per_s", "samples_per_s", "data_wait")
_LOG_Y = {"loss", "grad_norm"}  # span decades over a run


def smooth(values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing): s_k = EMA_k / (1 - w^k)."""
    out, acc = [], 0.0
    for k, v in enumerate(values, start=1):
        acc = weight * acc + (1.0 - weight) * v
        out.append(acc / (1.0 - weight**k))
    return out


def plot_curves(run_dir: Path, out: Path | None = None, *, smoothing: float = 0.8) -> Path:
    """Write the run's curves to ``out`` (default ``run_dir/curves.png``) and return its path."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.csv").is_file():
        raise FmkitError(f"{run_dir} holds no metrics.csv, so it is not a run directory", where=str(run_dir),
                         fix="pass the directory that `fmkit train` printed as 'run directory'")
    metrics = read_metrics(run_dir)
    if not metrics:
        raise FmkitError(f"no metrics to plot in {run_dir} yet", where=str(run_dir / "metrics.csv"),
                         fix="train for at least one log step (trainer.log_every) first")
    if not 0.0 <= smoothing < 1.0:
        raise FmkitError(f"smoothing must be in [0, 1), got {smoothing}", where="--smoothing",
                         fix="0 draws the raw values only; 0.8 is a usual choice")
    names = [n for n in _FIRST if n in metrics]
    names += sorted(n for n in metrics if n not in _FIRST and not n.startswith("eval/"))
    names += [n for n in metrics if n.startswith("eval/")]  # the recipe's metric order, as the tables

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        steps = [s for s, _ in metrics[name]]
        vals = [v for _, v in metrics[name]]
        marker = "o" if len(vals) <= 30 else None
        if name == "loss" and smoothing > 0 and len(vals) > 20:  # few points: the raw line says it all
            ax.plot(steps, vals, color="C0", alpha=0.3, lw=1, label="logged")
            ax.plot(steps, smooth(vals, smoothing), color="C0", lw=1.8, label=f"EMA {smoothing:g}")
            ax.legend(fontsize=7, frameon=False)
        else:
            ax.plot(steps, vals, color="C1" if name.startswith("eval/") else "C0", lw=1.5, marker=marker, ms=3)
        if name in _LOG_Y and all(v > 0 and math.isfinite(v) for v in vals) and max(vals) > 10 * min(vals):
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)  # no "1e-9+9.9999e-4" offset over a flat lr
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    last = max(s for v in metrics.values() for s, _ in v)
    fig.suptitle(f"{run_dir.name} (to step {last})", fontsize=10)
    fig.tight_layout()
    out = Path(out) if out is not None else run_dir / CURVES_FILE
    tmp = out.with_name(f".{out.name}.tmp.png")  # whole or not at all, as the run's other files
    try:
        fig.savefig(tmp, dpi=110)
        tmp.replace(out)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write the curves to {out}: {exc.strerror or exc}", where=str(out),
                          fix="pass --out with a file in a folder you can write to") from None
    finally:
        plt.close(fig)
    return out
