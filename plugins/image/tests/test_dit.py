"""The DiT backbone: fmkit's model contracts (one and two times), classifier-free guidance's null class, adaLN-Zero
(an initial output of exactly 0, a class that matters once the head has moved), positions, patch order, size."""

import pytest
import torch
from fmkit.plugin import ClassifierFreeGuidance, TensorDataset
from fmkit.testing import check_model
from fmkit_image.dit import DiT, sincos_positions_2d
from image_testlib import wake_zero_init

SMALL = dict(patch_size=4, hidden=32, depth=2, num_heads=2)  # 49 tokens of 28 px


def _mnist_like(n: int = 8) -> TensorDataset:
    return TensorDataset({"x": torch.randn(n, 1, 28, 28), "cond": torch.randint(0, 10, (n,))}, num_cond_classes=10)


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("size, patch", [(28, 2), (32, 4), (64, 8)])
def test_shapes_and_conditioning(c, size, patch):
    torch.manual_seed(0)
    m = DiT(image_shape=(c, size, size), num_classes=10, **{**SMALL, "patch_size": patch})
    wake_zero_init(m)
    x = torch.randn(3, c, size, size)
    t = torch.rand(3)
    a = m({"x": x}, t, torch.tensor([0, 1, 2]))["x"]
    b = m({"x": x}, t, torch.tensor([5, 6, 7]))["x"]
    assert a.shape == x.shape
    assert not torch.allclose(a, b)  # the label changes the velocity


def test_the_model_contract_and_a_non_square_image():
    torch.manual_seed(0)
    ds = _mnist_like()
    m = DiT(data_info=ds.info, **SMALL)
    wake_zero_init(m)
    check_model(m, ds)  # shapes, determinism, examples that do not interact
    wide = DiT(image_shape=(3, 16, 24), num_classes=None, **SMALL)
    wake_zero_init(wide)
    assert wide({"x": torch.randn(2, 3, 16, 24)}, torch.rand(2))["x"].shape == (2, 3, 16, 24)


def test_null_class_and_guidance_zero_is_unconditional():
    torch.manual_seed(0)
    m = DiT(image_shape=(1, 28, 28), num_classes=10, **SMALL).eval()
    wake_zero_init(m)
    x, t = torch.randn(4, 1, 28, 28), torch.rand(4)
    cond = torch.tensor([1, 3, 5, 7])
    uncond = m({"x": x}, t, torch.full((4,), 10))["x"]
    assert torch.allclose(m({"x": x}, t, None)["x"], uncond)
    g0 = ClassifierFreeGuidance(m, 0.0, 10)({"x": x}, t, cond)["x"]
    torch.testing.assert_close(g0, uncond, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(m({"x": x}, t, cond)["x"], uncond)


def test_adaln_zero_initial_output_is_zero_and_x1_prediction_is_the_input():
    torch.manual_seed(0)
    x, t, c = torch.randn(3, 1, 28, 28), torch.rand(3), torch.tensor([0, 4, 9])
    m = DiT(image_shape=(1, 28, 28), num_classes=10, **SMALL)
    assert torch.equal(m({"x": x}, t, c)["x"], torch.zeros_like(x))
    res = DiT(image_shape=(1, 28, 28), num_classes=10, predictions={"x": "x1"}, **SMALL)
    assert torch.equal(res({"x": x}, t, c)["x"], x)


def test_class_changes_the_output_once_the_head_has_moved():
    """adaLN-Zero: at init the gradient reaches only the output linear (everything before it is multiplied by its
    zero weight), so after one step the output is still blind to the class; after a second step the modulations
    have moved and two labels give two velocities."""
    torch.manual_seed(0)
    m = DiT(image_shape=(1, 28, 28), num_classes=10, **SMALL)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x, t, y = torch.randn(8, 1, 28, 28), torch.rand(8), torch.randint(0, 10, (8,))
    probe = torch.randn(2, 1, 28, 28), torch.rand(2)

    def step_and_gap() -> float:
        loss = (m({"x": x}, t, y)["x"] - torch.randn_like(x)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            a = m({"x": probe[0]}, probe[1], torch.tensor([1, 1]))["x"]
            b = m({"x": probe[0]}, probe[1], torch.tensor([7, 7]))["x"]
        return float((a - b).abs().max())

    first = step_and_gap()
    assert first == 0.0 and m.final.linear.weight.abs().sum() > 0  # the head moved, the class not yet seen
    assert step_and_gap() > 1e-4


@pytest.mark.parametrize("positions", ["sincos", "learned"])
def test_positions(positions):
    m = DiT(image_shape=(1, 28, 28), num_classes=10, positions=positions, **SMALL)
    table = sincos_positions_2d(32, 7, 7)
    torch.testing.assert_close(m.pos[0], table)  # learned positions start from the fixed table
    assert table.shape == (49, 32) and len({tuple(r.tolist()) for r in table}) == 49  # every patch told apart
    learned = positions == "learned"
    assert ("pos" in dict(m.named_parameters())) == learned and ("pos" in m.state_dict()) == learned
    wake_zero_init(m)
    m({"x": torch.randn(2, 1, 28, 28)}, torch.rand(2), torch.tensor([1, 2]))["x"].square().sum().backward()
    assert (m.pos.grad is not None and m.pos.grad.abs().sum() > 0) == learned


def test_patch_tokens_in_raster_order_and_unpatchify_inverts():
    m = DiT(image_shape=(3, 8, 12), num_classes=None, patch_size=4, hidden=32, depth=1, num_heads=2)
    x = torch.randn(2, 3, 8, 12)
    tokens = m.patchify(x)
    assert tokens.shape == (2, 6, 48)  # a 2 x 3 grid of 4x4x3 patches
    # token 4 = grid row 1, column 1: the pixels [4:8, 4:8] of every channel, and nothing else
    assert sorted(tokens[0, 4].tolist()) == sorted(x[0, :, 4:8, 4:8].reshape(-1).tolist())
    assert torch.equal(m.unpatchify(tokens), x)


def test_compiles_without_graph_breaks():
    torch.manual_seed(0)
    m = DiT(image_shape=(1, 28, 28), num_classes=10, **SMALL).eval()
    wake_zero_init(m)
    x, t, c = torch.randn(2, 1, 28, 28), torch.rand(2), torch.tensor([1, 2])
    explained = torch._dynamo.explain(m)({"x": x}, t, c)
    assert explained.graph_break_count == 0
    cm = torch.compile(m)
    torch.testing.assert_close(cm({"x": x}, t, c)["x"], m({"x": x}, t, c)["x"], rtol=1e-4, atol=1e-5)


def test_reference_size_dit_s2():
    # DiT-S/2 (Peebles & Xie 2023, Table 1: 12 blocks, hidden 384, 6 heads) on 32x32x4 latents, 1000 classes: 33M
    # parameters there, with a learned-sigma head of twice the channels and the position table as a parameter
    m = DiT(image_shape=(4, 32, 32), num_classes=1000, patch_size=2, hidden=384, depth=12, num_heads=6)
    n = sum(p.numel() for p in m.parameters())
    assert 32.5e6 < n < 33.5e6, n


def test_two_times_meet_the_contract_and_take_a_meanflow_step():
    """With ``two_times`` the DiT is u(x, r, t) (fmkit.testing.check_two_time_model: r = t is the one-time model,
    r matters, the JVP runs through attention and the LayerNorms); a MeanFlow loss backpropagates."""
    from fmkit.plugin import AffinePath, CondOTScheduler, ModelError
    from fmkit.testing import MeanFlowObjective, check_two_time_model

    torch.manual_seed(0)
    ds = _mnist_like()
    m = DiT(data_info=ds.info, two_times=True, **SMALL)
    wake_zero_init(m)
    check_model(m, ds)
    check_two_time_model(m, ds)
    m.train()
    # equal_fraction 0: every example has r != t, so the interval embedding is in the loss (at r = t it is 0)
    loss, _ = MeanFlowObjective(AffinePath(CondOTScheduler()), equal_fraction=0.0)(m, ds.get_batch([0, 1, 2]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert m.interval.mlp[0].weight.grad.abs().sum() > 0  # the interval embedding trains
    one = DiT(data_info=ds.info, **SMALL)
    with pytest.raises(ModelError, match="two_times: true") as e:
        one({"x": torch.randn(2, 1, 28, 28)}, torch.rand(2), r=torch.rand(2))
    assert "this dit was built for one time" in str(e.value)


def test_a_guidance_input_dit_meets_the_contract():
    """``guidance_input``: omega = 1 is the DiT without it, another omega moves the output, the JVP runs."""
    from fmkit.testing import check_two_time_model

    torch.manual_seed(0)
    ds = _mnist_like()
    m = DiT(data_info=ds.info, two_times=True, guidance_input=True, **SMALL)
    wake_zero_init(m)
    check_two_time_model(m, ds)
