"""A metric: how far the first two moments of the samples are from the data's."""

import torch
from fmkit.plugin import Dataset, State


class MomentGap:
    """|mean_s - mean_d| and the Frobenius norm of cov_s - cov_d, on field "x"."""

    def __call__(self, samples: State, dataset: Dataset) -> dict[str, float]:
        s = samples["x"].flatten(1).double()
        d = dataset.reference(len(s))["x"].flatten(1).double()
        return {"mean_gap": float((s.mean(0) - d.mean(0)).norm()),
                "cov_gap": float((torch.cov(s.T) - torch.cov(d.T)).norm())}
