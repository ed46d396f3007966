"""The model of plugin __plugin__ keeps fmkit's model contract."""

import torch
from fmkit.plugin import TensorDataset
from fmkit.testing import check_model

from fmkit___plugin__.net import ResNet


def test_model_keeps_the_contract():
    data = TensorDataset(torch.randn(16, 2))
    check_model(ResNet.from_data(data.info), data)
