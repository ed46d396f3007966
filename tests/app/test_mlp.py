"""The toy MLP under an x1-predicting path: built residual (x1^ = x_t + MLP) from the recipe."""

from __future__ import annotations

import torch
from fmkit.app.builtin.mlp import MLP
from fmkit.app.recipe import load_recipe
from fmkit.app.run import build_components


def test_recipe_with_x1_prediction_builds_a_residual_mlp():
    """``path.prediction: x1`` reaches the model through the ``predictions`` context; a residual MLP
    outputs x_t plus what the same weights output as a plain MLP."""
    for prediction in ("velocity", "x1"):
        rec = load_recipe("recipes/toy_moons.yaml", [f"path.prediction={prediction}"])
        model = build_components(rec, with_eval=False).model
        assert isinstance(model, MLP) and model.residual == (prediction == "x1")
    torch.manual_seed(0)
    plain = MLP(2, hidden=16, depth=2, time_dim=8)
    torch.manual_seed(0)
    res = MLP(2, hidden=16, depth=2, time_dim=8, residual=True)
    x, t = {"x": torch.randn(5, 2)}, torch.rand(5)
    torch.testing.assert_close(res(x, t)["x"], x["x"] + plain(x, t)["x"])
