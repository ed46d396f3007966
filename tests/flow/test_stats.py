"""The Fréchet distance that the image and audio metrics share, on inputs with known answers."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from fmkit.flow.stats import frechet_distance
from scipy import linalg


def test_one_dimensional_affine_map_has_its_closed_form():
    a = torch.randn(500, 1, dtype=torch.float64)
    b = 2 * a + 1  # mu_b = 2 mu_a + 1, var_b = 4 var_a: FD = (mu_a + 1)^2 + var_a
    mu, var = float(a.mean()), float(a.var())
    assert abs(frechet_distance(a, b) - ((mu + 1) ** 2 + var)) < 1e-10


def test_agrees_with_the_matrix_square_root_formula_and_is_zero_on_itself():
    a, b = torch.randn(400, 6, dtype=torch.float64), torch.randn(300, 6, dtype=torch.float64) * 1.5 + 0.2
    s1, s2 = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert abs(frechet_distance(a, b) - ref) < 1e-9
    assert abs(frechet_distance(a, a)) < 1e-9


def test_features_that_are_always_zero_change_nothing_and_raise_no_warning():
    a, b = torch.randn(200, 5), torch.randn(200, 5) + 0.5
    pad = torch.zeros(200, 3)  # dead ReLU units: singular covariances
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        padded = frechet_distance(torch.cat([a, pad], 1), torch.cat([b, pad], 1))
    assert abs(padded - frechet_distance(a, b)) < 1e-9
