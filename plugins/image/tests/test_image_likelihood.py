import math

import fmkit
import torch
from fmkit_image.likelihood import bits_per_dim


def test_bpd_of_known_gaussian_flow_matches_closed_form():
    """v(x, t) = 0 maps N(0, s^2) to itself; the dequantised bpd then has a closed form."""
    s = 0.5
    u8 = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    source = fmkit.GaussianSource(std=s)
    vel = lambda x, t: {"x": torch.zeros_like(x["x"]) + 0 * x["x"]}  # noqa: E731
    res = bits_per_dim(vel, u8, source, fmkit.FixedStepSolver("euler", 4), draws=3, estimator="exact", seed=1)
    g = torch.Generator().manual_seed(1)
    want = torch.zeros(50, dtype=torch.float64)
    d = 16
    for _ in range(3):
        x = 2 * (u8.double() + torch.rand(u8.shape, generator=g).double()) / 256 - 1
        logp = (-0.5 * (x / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)
        want += (-logp + d * math.log(128)) / (d * math.log(2))
    want /= 3
    torch.testing.assert_close(res.per_image, want, rtol=1e-5, atol=1e-5)
    assert res.draws == 3
