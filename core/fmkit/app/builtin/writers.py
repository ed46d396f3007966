"""Artefact writers of the core: the 2-D scatter plot of samples over data."""

from __future__ import annotations

from pathlib import Path

from fmkit.flow.data import Dataset
from fmkit.flow.state import State


class ScatterWriter:
    """PNG scatter of generated points (and a reference set of data points) for a 2-D field."""

    def __init__(self, field: str = "x", num_reference: int = 2000, max_points: int = 5000) -> None:
        self.field, self.num_reference, self.max_points = field, num_reference, max_points

    def __call__(self, samples: State, out_dir: Path, dataset: Dataset, step: int) -> list[Path]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = samples[self.field][: self.max_points].detach().float().cpu()
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"scatter writer needs a [N, 2] field, got {tuple(x.shape)} for {self.field!r}")
        ref = dataset.reference(self.num_reference)[self.field].float().cpu()
        fig, ax = plt.subplots(figsize=(5, 5), dpi=120)
        ax.scatter(ref[:, 0], ref[:, 1], s=2, alpha=0.35, c="tab:gray", label="data")
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.6, c="tab:blue", label="samples")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
        ax.set_title(f"step {step}: {x.shape[0]} samples")
        out = Path(out_dir) / f"samples_step{step:07d}.png"
        fig.savefig(out, bbox_inches="tight")
        plt.close(fig)
        return [out]
