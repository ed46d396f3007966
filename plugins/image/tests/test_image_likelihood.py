import math

import torch
from fmkit.plugin import FixedStepSolver, GaussianSource
from fmkit_image.likelihood import bits_per_dim


def test_bpd_of_known_gaussian_flow_matches_closed_form():
    """v(x, t) = 0 maps N(0, s^2) to itself; the dequantised bpd then has a closed form."""
    s = 0.5
    u8 = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8)
    source = GaussianSource(std=s)
    vel = lambda x, t: {"x": torch.zeros_like(x["x"]) + 0 * x["x"]}  # noqa: E731
    res = bits_per_dim(vel, u8, source, FixedStepSolver("euler", 4), draws=3, estimator="exact", seed=1)
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


def test_image_data_declares_dequantisation_for_fmkit_evaluate():
    """`fmkit evaluate --likelihood` reads the dataset's declaration: 8-bit images are dequantised over
    [-1, 1] with this plugin's offset, and one draw of the core's protocol matches ``bits_per_dim``
    (scoring the pixels at their bin centres gave negative bits/dim)."""
    from fmkit.plugin import data_log_likelihood, declared_likelihood
    from fmkit_image.data import ImageDataset
    from fmkit_image.likelihood import OFFSET_PER_DIM

    u8 = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ds = ImageDataset(u8, torch.zeros(20, dtype=torch.long))
    deq = declared_likelihood(ds.info.meta, "dataset 'images'")
    assert deq is not None and math.isclose(deq.nats_per_dim, OFFSET_PER_DIM)
    s = 0.5
    source = GaussianSource(std=s)
    vel = lambda x, t: {"x": torch.zeros_like(x["x"]) + 0 * x["x"]}  # noqa: E731
    solver = FixedStepSolver("euler", 4)
    core = data_log_likelihood(vel, {"x": ds.scale(u8)}, source, solver, deq, estimator="exact",
                               generator=torch.Generator().manual_seed(1))
    plugin = bits_per_dim(vel, u8, source, solver, draws=1, estimator="exact", seed=1)
    torch.testing.assert_close(core.bits_per_dim.double(), plugin.per_image, rtol=1e-5, atol=1e-5)
    assert (core.bits_per_dim > 0).all()
