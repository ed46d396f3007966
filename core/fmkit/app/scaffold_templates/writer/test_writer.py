"""The writer of plugin __plugin__ writes one row per sample."""

import torch
from fmkit.plugin import TensorDataset

from fmkit___plugin__.writers import CsvWriter


def test_writer_writes_one_row_per_sample(tmp_path):
    data = TensorDataset(torch.randn(8, 2))
    (path,) = CsvWriter()(data.reference(8), tmp_path, data, 3)
    assert len(path.read_text().splitlines()) == 8
