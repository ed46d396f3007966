"""trainer.channels_last: convolution weights and image batches in NHWC memory order (what cuDNN's
fast kernels read). The layout changes strides, never values: training matches the default layout to
float tolerance, and a stop + resume is still bitwise the straight run. On by default only for a
CUDA model with 2-D convolutions."""

from __future__ import annotations

import fmkit
import pytest
import torch
from fmkit.engine.metrics_log import read_metrics
from fmkit.engine.setup import use_channels_last
from torch import nn


class ConvNet(nn.Module):
    """v(x, t) for 3x8x8 images: two 3x3 convolutions with t as an extra input channel."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)
        self.layouts: list[bool] = []  # channels-last or not, per training forward

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        tt = t.reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])
        return self.b(torch.nn.functional.silu(self.a(torch.cat([x, tt], 1))))


def train(run_dir, channels_last: bool | None, steps: int = 8, until: int | None = None, resume: bool = False):
    torch.manual_seed(0)
    data = torch.randn(64, 3, 8, 8)
    opts = fmkit.TrainerOptions(steps=steps, batch_size=16, log_every=1, checkpoint_every=4, progress=False,
                                device="cpu", channels_last=channels_last, ema_decay=0.9)
    tr = fmkit.Trainer(fmkit.TensorModel(ConvNet()), fmkit.TensorDataset(data), options=opts, run_dir=run_dir,
                       seed=0)
    tr.fit(until=until, resume=resume)
    return tr


def losses(run_dir) -> list[float]:
    return [v for _, v in read_metrics(run_dir)["loss"]]


@pytest.mark.parametrize("device,conv,option,expected", [
    ("cuda", True, None, True), ("cuda", False, None, False), ("cpu", True, None, False),
    ("cpu", False, True, True), ("cuda", True, False, False),
])
def test_default_is_on_only_for_a_cuda_convolution_model(device, conv, option, expected):
    model = ConvNet() if conv else nn.Sequential(nn.Linear(3, 3))
    assert use_channels_last(model, torch.device(device), option) is expected


def test_channels_last_trains_like_the_default_layout(tmp_path):
    nhwc, nchw = train(tmp_path / "nhwc", True), train(tmp_path / "nchw", None)
    net = nhwc.model.net
    assert nhwc.channels_last and not nchw.channels_last
    assert net.layouts and all(net.layouts) and not any(nchw.model.net.layouts)  # the batches the model saw
    for m in (net.a, nhwc.ema.model.net.a):  # the weights and their EMA copy
        assert m.weight.is_contiguous(memory_format=torch.channels_last) and not m.weight.is_contiguous()
    assert losses(tmp_path / "nhwc") == pytest.approx(losses(tmp_path / "nchw"), rel=1e-5)
    for (k, a), b in zip(nhwc.model.state_dict().items(), nchw.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def test_stop_and_resume_in_channels_last_equals_the_straight_run(tmp_path):
    straight = train(tmp_path / "a", True)
    train(tmp_path / "b", True, until=4)
    resumed = train(tmp_path / "b", True, resume=True)
    assert resumed.step == 8 and resumed.model.net.a.weight.is_contiguous(memory_format=torch.channels_last)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    for k, v in straight.ema.model.state_dict().items():
        assert torch.equal(v, resumed.ema.model.state_dict()[k]), k
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
