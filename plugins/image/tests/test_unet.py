import pytest
import torch
from fmkit.plugin import ClassifierFreeGuidance
from fmkit_image.unet import UNet
from image_testlib import wake_zero_init

SMALL = dict(channels=16, channel_mult=[1, 2], num_res_blocks=1, attention_resolutions=[14], num_heads=2,
             dropout=0.0, norm_groups=8)  # for 28 px: maps of 28 and 14 px


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("size", [28, 32, 64])
def test_shapes_and_conditioning(c, size):
    torch.manual_seed(0)
    m = UNet(image_shape=(c, size, size), num_classes=10, **{**SMALL, "attention_resolutions": [size // 2]})
    wake_zero_init(m)
    x = torch.randn(3, c, size, size)
    t = torch.rand(3)
    a = m({"x": x}, t, torch.tensor([0, 1, 2]))["x"]
    b = m({"x": x}, t, torch.tensor([5, 6, 7]))["x"]
    assert a.shape == x.shape
    assert not torch.allclose(a, b)  # the label changes the velocity


def test_null_class_and_guidance_zero_is_unconditional():
    torch.manual_seed(0)
    m = UNet(image_shape=(1, 28, 28), num_classes=10, **SMALL).eval()
    wake_zero_init(m)
    x, t = torch.randn(4, 1, 28, 28), torch.rand(4)
    cond = torch.tensor([1, 3, 5, 7])
    uncond = m({"x": x}, t, torch.full((4,), 10))["x"]
    assert torch.allclose(m({"x": x}, t, None)["x"], uncond)
    g0 = ClassifierFreeGuidance(m, 0.0, 10)({"x": x}, t, cond)["x"]
    torch.testing.assert_close(g0, uncond, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(m({"x": x}, t, cond)["x"], uncond)


def test_compiles_without_graph_breaks():
    torch.manual_seed(0)
    m = UNet(image_shape=(1, 28, 28), num_classes=10, **SMALL).eval()
    x, t, c = torch.randn(2, 1, 28, 28), torch.rand(2), torch.tensor([1, 2])
    explained = torch._dynamo.explain(m)({"x": x}, t, c)
    assert explained.graph_break_count == 0
    cm = torch.compile(m)
    torch.testing.assert_close(cm({"x": x}, t, c)["x"], m({"x": x}, t, c)["x"], rtol=1e-4, atol=1e-5)


def test_reference_size_cifar():
    m = UNet(image_shape=(3, 32, 32), num_classes=10, channels=128, channel_mult=[1, 2, 2, 2], num_res_blocks=2,
             attention_resolutions=[16], dropout=0.1)
    n = sum(p.numel() for p in m.parameters())
    assert 30e6 < n < 40e6  # TorchCFM's 35.7M; ours has a scale-shift embedding and a class embedding


def test_two_times_meet_the_contract_and_take_a_meanflow_step():
    """With ``two_times`` the U-Net is u(x, r, t) (fmkit.testing.check_two_time_model: r = t is the
    one-time model, r matters, the JVP runs through attention); a MeanFlow loss backpropagates."""
    from fmkit.plugin import AffinePath, CondOTScheduler, ModelError, TensorDataset
    from fmkit.testing import MeanFlowObjective, check_model, check_two_time_model

    torch.manual_seed(0)
    ds = TensorDataset({"x": torch.randn(8, 1, 28, 28), "cond": torch.randint(0, 10, (8,))},
                             num_cond_classes=10)
    m = UNet(data_info=ds.info, two_times=True, **SMALL)
    wake_zero_init(m)
    check_model(m, ds)
    check_two_time_model(m, ds)
    m.train()
    loss, _ = MeanFlowObjective(AffinePath(CondOTScheduler()))(m, ds.get_batch([0, 1, 2]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    assert m.interval.mlp[0].weight.grad.abs().sum() > 0  # the interval embedding trains
    one = UNet(data_info=ds.info, **SMALL)
    with pytest.raises(ModelError, match="two_times: true"):
        one({"x": torch.randn(2, 1, 28, 28)}, torch.rand(2), r=torch.rand(2))


def test_a_guidance_input_unet_meets_the_contract_and_its_scale_trains():
    """``guidance_input``: omega = 1 is the U-Net without it, another omega moves the output, the JVP runs
    with it (check_two_time_model); a MeanFlow step with drawn scales reaches the guidance embedding."""
    from fmkit.plugin import AffinePath, CondOTScheduler, ModelError, TensorDataset
    from fmkit.testing import MeanFlowObjective, check_two_time_model

    torch.manual_seed(0)
    ds = TensorDataset({"x": torch.randn(8, 1, 28, 28), "cond": torch.randint(0, 10, (8,))}, num_cond_classes=10)
    m = UNet(data_info=ds.info, two_times=True, guidance_input=True, **SMALL)
    wake_zero_init(m)
    check_two_time_model(m, ds)
    m.train()
    obj = MeanFlowObjective(AffinePath(CondOTScheduler()), guidance_range=(1.0, 3.0), cond_dropout=0.1, null_class=10)
    loss, _ = obj(m, ds.get_batch([0, 1, 2, 3]))
    loss.backward()
    assert m.guidance.mlp[0].weight.grad.abs().sum() > 0
    with pytest.raises(ModelError, match="guidance_input: true"):
        UNet(data_info=ds.info, two_times=True, **SMALL)({"x": torch.randn(2, 1, 28, 28)}, torch.rand(2),
                                                        torch.tensor([0, 1]), guidance=torch.ones(2))
