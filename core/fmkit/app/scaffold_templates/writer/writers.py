"""A writer: samples as CSV."""

from pathlib import Path

from fmkit.plugin import Dataset, State


class CsvWriter:
    """One row per sample of field "x", flattened: ``samples_step<N>.csv``."""

    def __call__(self, samples: State, out_dir: Path, dataset: Dataset, step: int) -> list[Path]:
        out = Path(out_dir) / f"samples_step{step}.csv"
        x = samples["x"].flatten(1).tolist()
        out.write_text("\n".join(",".join(f"{v:.6g}" for v in row) for row in x) + "\n")
        return [out]
