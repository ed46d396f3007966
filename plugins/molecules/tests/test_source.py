"""The zero-CoM Gaussian: samples centred over real atoms, log-density on the (n-1)*3-dim subspace."""

from __future__ import annotations

import math

import pytest
import torch
from fmkit_molecules.source import ComFreeGaussian


def test_samples_are_centred_and_padding_is_zero():
    torch.manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    x = ComFreeGaussian(std=2.0).sample(torch.zeros(2, 5, 3), mask)
    assert (x[0, 3:] == 0).all()
    assert torch.allclose((x * mask[..., None]).sum(1), torch.zeros(2, 3), atol=1e-5)


def test_marginal_variance_is_projected():
    torch.manual_seed(0)
    n = 4
    x = ComFreeGaussian().sample(torch.zeros(20000, n, 3))
    # projecting N(0, I) onto sum_i x_i = 0 leaves variance (n - 1) / n per coordinate
    assert abs(x.var(0).mean().item() - (n - 1) / n) < 0.02


def test_log_prob_equals_gaussian_density_in_subspace_coordinates():
    torch.manual_seed(0)
    n, std = 6, 1.7
    src = ComFreeGaussian(std=std)
    mask = torch.ones(3, n + 2, dtype=torch.bool)
    mask[:, n:] = False
    x = src.sample(torch.zeros(3, n + 2, 3, dtype=torch.float64), mask)
    # orthonormal basis of {v in R^n: sum v = 0}, applied per coordinate axis
    q, _ = torch.linalg.qr(torch.eye(n, dtype=torch.float64) - 1.0 / n)
    basis = q[:, : n - 1]  # [n, n-1]
    z = torch.einsum("nk,bnd->bkd", basis, x[:, :n]).reshape(3, -1)  # (n-1)*3 coordinates
    expected = torch.distributions.Normal(0.0, std).log_prob(z).sum(1)
    got = src.log_prob(x, mask)
    assert torch.allclose(got, expected, atol=1e-9)
    d = (n - 1) * 3
    assert torch.allclose(got, -0.5 * x.pow(2).sum((1, 2)) / std**2 - d * math.log(std * math.sqrt(2 * math.pi)))


def test_a_field_that_is_not_positions_is_refused():
    """One-hot atom types [B,N,5] under the default source got noise centred over the atoms, per
    channel, without a word (and a log-density counting (n-1)*5 dimensions)."""
    from fmkit.plugin import ContractError

    with pytest.raises(ContractError, match=r"3-D positions \[B, N, 3\].*\(2, 4, 5\)") as err:
        ComFreeGaussian().sample(torch.zeros(2, 4, 5))
    assert "fields: {atoms: {name: gaussian}}" in err.value.fix
    assert ComFreeGaussian().sample(torch.zeros(2, 4, 3)).shape == (2, 4, 3)
