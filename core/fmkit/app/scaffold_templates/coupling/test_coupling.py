"""The coupling of plugin __plugin__ re-pairs the rows it is given."""

import torch
from fmkit.testing import check_coupling

from fmkit___plugin__.couplings import SlicedCoupling


def test_coupling_repairs_the_given_rows():
    check_coupling(SlicedCoupling(), {"x": torch.randn(16, 2)}, {"x": torch.randn(16, 2)})
