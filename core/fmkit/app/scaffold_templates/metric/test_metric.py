"""The metric of plugin __plugin__ is zero when the samples are the data."""

import torch
from fmkit.plugin import TensorDataset

from fmkit___plugin__.metrics import MomentGap


def test_metric_is_zero_on_the_data_itself():
    data = TensorDataset(torch.randn(64, 2))
    out = MomentGap()(data.reference(64), data)
    assert out["mean_gap"] < 1e-9 and out["cov_gap"] < 1e-9
