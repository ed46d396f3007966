"""Masks: padded frames are out of the loss and have no influence on the model's output at real frames."""

from __future__ import annotations

import pytest
import torch
from fmkit.testing import Trainer, TrainerOptions

from fmkit_audio.data import build_fsdd
from fmkit_audio.model import MelUNet


@pytest.fixture(scope="module")
def dataset(synth_fsdd):
    return build_fsdd(root=str(synth_fsdd), limit=40)


def awake_net(dataset, seed: int = 0) -> MelUNet:
    """A small mel_unet whose zero-initialised output layer is woken (at init its output is all zeros,
    which would make any invariance trivially true)."""
    torch.manual_seed(seed)
    net = MelUNet(channels=[32, 64], res_blocks=1, attn_blocks=1, mid_blocks=1, heads=4, emb_dim=32,
                  data_info=dataset.info).eval()
    torch.nn.init.normal_(net.out.weight, std=0.1)
    torch.nn.init.normal_(net.out.bias, std=0.1)
    return net


def uneven_batch(dataset, width: int | None = None):
    lengths = torch.tensor([len_ for len_ in dataset.lengths])
    idx = [int(lengths.argmin()), int(lengths.argmax()), 3, 7]  # the shortest and the longest clip among them
    return dataset.collate([dataset[i] for i in idx], width=width)


def perturb_padding(x: torch.Tensor, mask: torch.Tensor, scale: float = 100.0, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.where(mask.bool(), x, scale * torch.randn(x.shape, generator=g))


def test_padded_frames_do_not_reach_real_frames_of_the_output(dataset):
    net = awake_net(dataset)
    b = uneven_batch(dataset)
    mask = b["mask"]
    assert (~mask).any(), "the batch needs padding for this test to mean anything"
    t = torch.tensor([0.1, 0.4, 0.7, 0.95])
    with torch.no_grad():
        ref = net({"mel": b["mel"], "mask": mask}, t, b["cond"])["mel"]
        pert = net({"mel": perturb_padding(b["mel"], mask), "mask": mask}, t, b["cond"])["mel"]
        # the same clips padded much wider (more padding, other batch width): same real-frame output
        wide = uneven_batch(dataset, width=dataset.max_frames + 16)
        out_wide = net({"mel": perturb_padding(wide["mel"], wide["mask"], seed=2), "mask": wide["mask"]}, t,
                       wide["cond"])["mel"]
    real = mask.expand_as(ref)
    assert ref.abs()[real].mean() > 1e-2  # the network is awake
    torch.testing.assert_close(pert[real], ref[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_wide[:, :, : ref.shape[-1]][real], ref[real], atol=1e-5, rtol=1e-5)
    assert (pert[~real] == 0).all() and (out_wide[~wide["mask"].expand_as(out_wide)] == 0).all()


def test_a_real_frame_does_reach_the_other_real_frames(dataset):
    """Control for the test above: the same perturbation on one real frame changes other real frames."""
    net = awake_net(dataset)
    b = uneven_batch(dataset)
    t = torch.full((4,), 0.5)
    x = b["mel"].clone()
    x[:, :, 0] += 100.0
    with torch.no_grad():
        ref = net({"mel": b["mel"], "mask": b["mask"]}, t, b["cond"])["mel"]
        pert = net({"mel": x, "mask": b["mask"]}, t, b["cond"])["mel"]
    real = b["mask"].clone()
    real[:, :, 0] = False
    diff = (pert - ref).abs()[real.expand_as(ref)]
    assert diff.max() > 1e-2


def test_padded_frames_are_out_of_the_loss(dataset):
    net = awake_net(dataset)
    net.train()
    tr = Trainer(net, dataset, options=TrainerOptions(steps=1, batch_size=4, device="cpu", ema_decay=None,
                                                      progress=False))
    b = uneven_batch(dataset)
    torch.manual_seed(0)
    x0 = dict(tr.source.sample(b))
    assert x0["mel"].shape == b["mel"].shape

    def loss(x1, x0_):
        torch.manual_seed(5)  # the same times t for every call
        total, parts = tr.loss(dict(x1), dict(x0_))
        return total.detach(), parts["mel"].detach()

    ref = loss(b, x0)
    b_pert = {**b, "mel": perturb_padding(b["mel"], b["mask"], seed=3)}
    x0_pert = {**x0, "mel": perturb_padding(x0["mel"], b["mask"], seed=4)}
    got = loss(b_pert, x0_pert)
    torch.testing.assert_close(got[0], ref[0], atol=1e-6, rtol=1e-5)
    # control: the same change on one real frame does change the loss
    b_real = {**b, "mel": b["mel"].clone()}
    b_real["mel"][:, :, 1] += 5.0
    assert abs(float(loss(b_real, x0)[0]) - float(ref[0])) > 1e-3


def test_collate_pads_to_the_frame_multiple_with_a_mask(dataset):
    b = uneven_batch(dataset)
    lengths = b["mask"].sum(dim=(1, 2))
    assert b["mel"].shape[-1] % 4 == 0 and b["mel"].shape[-1] >= int(lengths.max())
    assert b["mask"].shape == (4, 1, b["mel"].shape[-1]) and b["mask"].dtype == torch.bool
    for i in range(4):
        n = int(lengths[i])
        assert b["mask"][i, 0, :n].all() and not b["mask"][i, 0, n:].any()
        assert (b["mel"][i, :, n:] == 0).all()


def test_two_times_meet_the_contract_and_keep_padding_out(dataset):
    """With ``two_times`` the mel U-Net is u(x, r, t) (fmkit.testing.check_two_time_model), and padded
    frames still do not reach real ones when r is given."""
    from fmkit.plugin import ModelError
    from fmkit.testing import check_model, check_two_time_model

    torch.manual_seed(0)
    net = MelUNet(channels=[32, 64], res_blocks=1, attn_blocks=1, mid_blocks=1, heads=4, emb_dim=32, two_times=True,
                  data_info=dataset.info).eval()
    torch.nn.init.normal_(net.out.weight, std=0.1)
    torch.nn.init.normal_(net.out.bias, std=0.1)
    check_model(net, dataset)
    check_two_time_model(net, dataset)
    batch = uneven_batch(dataset)
    x_t = {"mel": batch["mel"], "mask": batch["mask"]}
    t, r = torch.rand(4) * 0.5, torch.rand(4) * 0.5 + 0.5
    with torch.no_grad():
        a = net(x_t, t, batch.get("cond"), r=r)["mel"]
        b = net({**x_t, "mel": perturb_padding(batch["mel"], batch["mask"])}, t, batch.get("cond"), r=r)["mel"]
    real = batch["mask"].bool().expand_as(a)
    torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-5)
    one = MelUNet(channels=[32, 64], res_blocks=1, attn_blocks=1, mid_blocks=1, heads=4, emb_dim=32,
                  data_info=dataset.info)
    with pytest.raises(ModelError, match="two_times: true"):
        one(x_t, t, batch.get("cond"), r=r)


def test_a_guidance_input_mel_unet_meets_the_contract(dataset):
    """``guidance_input`` (and a time_scale other than 1000): omega = 1 is the mel U-Net without it, another
    omega moves the output, the JVP runs (check_two_time_model)."""
    from fmkit.testing import check_two_time_model

    torch.manual_seed(0)
    net = MelUNet(channels=[32, 64], res_blocks=1, attn_blocks=1, mid_blocks=1, heads=4, emb_dim=32, two_times=True,
                  guidance_input=True, time_scale=50.0, data_info=dataset.info).eval()
    torch.nn.init.normal_(net.out.weight, std=0.1)
    torch.nn.init.normal_(net.out.bias, std=0.1)
    check_two_time_model(net, dataset)
