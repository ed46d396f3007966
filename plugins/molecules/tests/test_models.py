"""Velocity models in float64: SE(3) equivariance, permutation equivariance, padding isolation,
CoM-free velocities, mask-token and one-hot inputs, registry construction from DataInfo."""

from __future__ import annotations

import pytest
import torch
from fmkit.plugin import DataInfo, FieldInfo
from fmkit_molecules.geometry import random_rotation, remove_mean
from fmkit_molecules.models.e3nn_flow import E3nnFlow
from fmkit_molecules.models.egnn import EGNN

TOL = 1e-6


def build(kind: str, encoding: str = "categorical", predictions: dict[str, str] | None = None):
    torch.manual_seed(0)
    if kind == "e3nn":
        m = E3nnFlow(scalars=12, vectors=4, layers=2, num_basis=8, radial_hidden=16, atom_encoding=encoding,
                     num_classes=5, predictions=predictions)
    else:
        m = EGNN(hidden=32, layers=3, atom_encoding=encoding, num_classes=5, predictions=predictions)
    return m.double().eval()


def inputs(encoding: str = "categorical", seed: int = 0, b: int = 3, n: int = 7):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[0, 5:] = False
    mask[1, 6:] = False
    pos = remove_mean(torch.randn(b, n, 3, generator=g, dtype=torch.float64) * 1.5, mask)
    if encoding == "categorical":
        atoms = torch.randint(0, 6, (b, n), generator=g)  # index 5 = mask token of the discrete path
    else:
        atoms = torch.randn(b, n, 5, generator=g, dtype=torch.float64)
    atoms = atoms * (mask if encoding == "categorical" else mask[..., None])
    t = torch.rand(b, generator=g, dtype=torch.float64)
    return {"pos": pos, "atoms": atoms, "mask": mask}, t


CASES = [("e3nn", "categorical"), ("e3nn", "onehot"), ("egnn", "categorical"), ("egnn", "onehot")]


@pytest.mark.parametrize("kind,enc", CASES)
def test_rotation_translation_equivariance(kind, enc):
    m = build(kind, enc)
    x, t = inputs(enc)
    out = m(x, t)
    assert out["pos"].shape == (3, 7, 3) and out["atoms"].shape == (3, 7, 5)
    assert out["pos"].abs().max() > 1e-3  # not trivially zero
    r = random_rotation(1, generator=torch.Generator().manual_seed(3))[0]
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    xr = dict(x, pos=(x["pos"] @ r.T + shift) * x["mask"][..., None])
    out_r = m(xr, t)
    m_ = x["mask"][..., None]
    assert ((out_r["pos"] - out["pos"] @ r.T) * m_).abs().max() < TOL
    assert ((out_r["atoms"] - out["atoms"]) * m_).abs().max() < TOL


@pytest.mark.parametrize("kind,enc", CASES)
def test_permutation_equivariance(kind, enc):
    m = build(kind, enc)
    x, t = inputs(enc, b=2, n=6)
    x["mask"][:] = True
    x["pos"] = remove_mean(x["pos"], None)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    out = m(x, t)
    xp = {k: v[:, perm] for k, v in x.items()}
    out_p = m(xp, t)
    assert (out_p["pos"] - out["pos"][:, perm]).abs().max() < TOL
    assert (out_p["atoms"] - out["atoms"][:, perm]).abs().max() < TOL


@pytest.mark.parametrize("kind,enc", CASES)
def test_padding_never_changes_real_atoms(kind, enc):
    m = build(kind, enc)
    x, t = inputs(enc)
    out = m(x, t)
    # more padding slots with garbage in them
    b, n = x["mask"].shape
    extra = 4
    pos = torch.cat([x["pos"], torch.randn(b, extra, 3, dtype=torch.float64) * 50], 1)
    pos[~torch.cat([x["mask"], torch.zeros(b, extra, dtype=torch.bool)], 1)] = 7.0
    if enc == "categorical":
        atoms = torch.cat([x["atoms"], torch.full((b, extra), 3)], 1)
        atoms[:, :n][~x["mask"]] = 5
    else:
        atoms = torch.cat([x["atoms"], torch.randn(b, extra, 5, dtype=torch.float64) * 9], 1)
    mask = torch.cat([x["mask"], torch.zeros(b, extra, dtype=torch.bool)], 1)
    out2 = m({"pos": pos, "atoms": atoms, "mask": mask}, t)
    m_ = x["mask"][..., None]
    assert ((out2["pos"][:, :n] - out["pos"]) * m_).abs().max() < TOL
    assert ((out2["atoms"][:, :n] - out["atoms"]) * m_).abs().max() < TOL
    assert (out2["pos"][~mask] == 0).all()


@pytest.mark.parametrize("kind", ["e3nn", "egnn"])
def test_velocity_is_com_free_and_batch_independent(kind):
    m = build(kind)
    x, t = inputs()
    out = m(x, t)
    com = (out["pos"] * x["mask"][..., None]).sum(1)
    assert com.abs().max() < 1e-10
    single = m({k: v[1:2] for k, v in x.items()}, t[1:2])
    assert (single["pos"] - out["pos"][1:2]).abs().max() < 1e-10


@pytest.mark.parametrize("kind", ["e3nn", "egnn"])
def test_x1_prediction_outputs_x_t_plus_the_velocity_head(kind):
    """When the path trains ``pos`` to x1, the same weights output x_t + (the velocity-mode output):
    the network still predicts a displacement (EGNN: its final coordinates x_L), so the equivariance,
    permutation and padding properties tested above carry over; the output stays CoM-free."""
    x, t = inputs()
    v = build(kind)(x, t)
    x1 = build(kind, predictions={"pos": "x1"})(x, t)
    m_ = x["mask"][..., None]
    torch.testing.assert_close(x1["pos"], (x["pos"] + v["pos"]) * m_, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x1["atoms"], v["atoms"], rtol=0, atol=0)
    assert (x1["pos"] * m_).sum(1).abs().max() < 1e-10


def test_recipe_path_prediction_reaches_the_model(xyz_file):
    """``path: {prediction: x1}`` in a recipe builds the model with ``predictions={"pos": "x1"}``."""
    import fmkit_molecules.plugin as plugin
    from fmkit.plugin import load_recipe
    from fmkit.testing import build_components, fresh_registry

    reg = fresh_registry(plugin)
    for prediction in ("velocity", "x1"):
        recipe = load_recipe({
            "name": "x1_wiring", "data": {"name": "xyz_molecules", "path": str(xyz_file)},
            "model": {"name": "egnn", "hidden": 8, "layers": 1},
            "path": {"name": "condot", "prediction": prediction, "fields": {"atoms": {"name": "discrete"}}},
            "source": {"name": "com_free_gaussian"},
        }, registry=reg)
        comps = build_components(recipe, reg, with_eval=False)
        assert comps.model.predicts_x1 == (prediction == "x1")
        assert comps.path.for_field("pos").prediction == prediction


def test_registry_builds_models_from_data_info():
    import fmkit_molecules.plugin as plugin
    from fmkit.testing import fresh_registry

    reg = fresh_registry(plugin)
    info = DataInfo(fields={"pos": FieldInfo((None, 3)), "atoms": FieldInfo((None,), num_classes=5)}, has_mask=True,
                    meta={"max_atoms": 29})
    m = reg.build("models", {"name": "e3nn_flow", "scalars": 8, "vectors": 2, "layers": 1}, data_info=info)
    assert m.encoding == "categorical" and m.embed.emb.num_embeddings == 6  # K + 1 (mask token)
    info1h = DataInfo(fields={"pos": FieldInfo((None, 3)), "atoms": FieldInfo((None, 5))}, has_mask=True)
    m2 = reg.build("models", {"name": "egnn", "hidden": 16, "layers": 1}, data_info=info1h)
    assert m2.encoding == "onehot"
    from fmkit.plugin import RecipeError

    with pytest.raises(RecipeError, match="unknown option"):
        reg.build("models", {"name": "egnn", "hiden": 16}, data_info=info)


@pytest.mark.parametrize("kind", ["e3nn", "egnn"])
def test_models_compile_as_one_graph(kind):
    """torch.compile (dynamo, ``fullgraph``: no graph break allowed) traces the model, forward and
    backward, to the eager outputs and gradients. The ``aot_eager`` backend checks the tracing the
    GPU run depends on without inductor's C++ build; e3nn's ``Irreps`` once broke dynamo's guards."""
    torch._dynamo.reset()
    m = build(kind).float()
    x, t = inputs()
    x = {k: (v.float() if v.is_floating_point() else v) for k, v in x.items()}
    t = t.float()
    eager = m(x, t)
    (eager["pos"].square().sum() + eager["atoms"].square().sum()).backward()
    g_eager = [p.grad.clone() for p in m.parameters()]
    m.zero_grad(set_to_none=True)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    out = compiled(x, t)
    (out["pos"].square().sum() + out["atoms"].square().sum()).backward()
    for k in ("pos", "atoms"):
        torch.testing.assert_close(out[k], eager[k], rtol=1e-5, atol=1e-5)
    for p, g in zip(m.parameters(), g_eager):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-5)


def test_recipe_sized_e3nn_model_starts_at_unit_scale():
    """At the QM9 recipe's size (6 layers, 128x0e + 32x1o + 32x1e) the untrained outputs are O(1):
    the edge weights are products with the features, and without a norm each layer squared the
    scale (output rms ~4e8 at init, a first loss of ~1e17)."""
    torch.manual_seed(0)
    m = E3nnFlow(scalars=128, vectors=32, lmax=2, layers=6, num_basis=20, r_max=10.0, radial_hidden=128,
                 atom_encoding="categorical", num_classes=5).eval()
    x, t = inputs(b=4, n=18)
    x = {k: (v.float() if v.is_floating_point() else v) for k, v in x.items()}
    x["pos"] = x["pos"] * 1.2  # QM9-like spread (~1.8 A rms)
    with torch.no_grad():
        out = m(x, t.float())
    real = x["mask"]
    for k in ("pos", "atoms"):
        rms = out[k][real].pow(2).mean().sqrt().item()
        assert 0.05 < rms < 10.0, f"{k} output rms {rms:.3g} at init"
