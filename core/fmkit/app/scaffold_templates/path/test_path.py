"""The path of plugin __plugin__: its target velocity is the time derivative of the path."""

import torch
from fmkit.plugin import AffinePath
from fmkit.testing import check_path

from fmkit___plugin__.paths import SineScheduler


def test_path_velocity_is_the_derivative_of_the_path():
    check_path(AffinePath(SineScheduler()), torch.randn(8, 2), torch.randn(8, 2))
