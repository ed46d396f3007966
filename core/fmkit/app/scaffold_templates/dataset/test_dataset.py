"""The dataset of plugin __plugin__ keeps fmkit's dataset contract."""

from fmkit.testing import check_dataset

from fmkit___plugin__.data import SpiralDataset


def test_dataset_keeps_the_contract():
    check_dataset(SpiralDataset(n=256))
