"""Training images/s: fmkit's U-Net through fmkit.Trainer vs TorchCFM's UNetModelWrapper of the same
configuration in a bare CFM loop; same batch, interleaved rounds, one process. CPU or CUDA.

    python bench/bench_image.py --config mnist --batch 64 --rounds 3 --steps 5 [--device cuda]

Prints images/s of each per round and the ratio of medians (fmkit / TorchCFM).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import fmkit
import torch
from fmkit_image.data import ImageDataset
from fmkit_image.unet import UNet

CONFIGS = {  # the same sizes for both nets
    "mnist": dict(shape=(1, 28, 28), channels=32, channel_mult=[1, 2, 2], num_res_blocks=1, attention_resolutions=[14],
                  num_heads=4, dropout=0.1),
    "cifar10": dict(shape=(3, 32, 32), channels=128, channel_mult=[1, 2, 2, 2], num_res_blocks=2,
                    attention_resolutions=[16], num_heads=4, dropout=0.1),
}


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", choices=list(CONFIGS), default="mnist")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    from torchcfm.models.unet import UNetModelWrapper

    dev = torch.device(a.device)
    cfg = dict(CONFIGS[a.config])
    c, h, w = cfg.pop("shape")
    n = a.batch * (a.steps + 2) * (a.rounds + 1)
    g = torch.Generator().manual_seed(0)
    ds = ImageDataset(torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (n,), generator=g), name=a.config)
    ours = UNet(data_info=ds.info, class_conditional=False, **cfg)
    tr = fmkit.Trainer(ours, ds, options=fmkit.TrainerOptions(steps=10**9, batch_size=a.batch, device=a.device,
                                                              progress=False, ema_decay=0.9999, grad_clip=1.0))
    ref = UNetModelWrapper(dim=(c, h, w), num_channels=cfg["channels"], num_res_blocks=cfg["num_res_blocks"],
                           channel_mult=cfg["channel_mult"], attention_resolutions=",".join(str(r) for r in cfg["attention_resolutions"]),
                           num_heads=cfg["num_heads"], dropout=cfg["dropout"]).to(dev)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, fused=True)
    data = ds.get_batch(range(a.batch))["x"].to(dev)

    def ref_step():
        x0 = torch.randn_like(data)
        t = torch.rand(a.batch, device=dev)
        xt = t[:, None, None, None] * data + (1 - t[:, None, None, None]) * x0
        loss = (ref(t, xt) - (data - x0)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()

    tr.fit(until=1)
    ref_step()
    res = {"fmkit": [], "torchcfm": []}
    for r in range(a.rounds):
        sync(dev); t0 = time.perf_counter()
        tr.fit(until=tr.step + a.steps)
        sync(dev); res["fmkit"].append(a.steps * a.batch / (time.perf_counter() - t0))
        sync(dev); t0 = time.perf_counter()
        for _ in range(a.steps):
            ref_step()
        sync(dev); res["torchcfm"].append(a.steps * a.batch / (time.perf_counter() - t0))
        print(f"round {r}: fmkit {res['fmkit'][-1]:.1f} img/s, torchcfm {res['torchcfm'][-1]:.1f} img/s", flush=True)
    out = {k: statistics.median(v) for k, v in res.items()}
    out["ratio"] = out["fmkit"] / out["torchcfm"]
    out.update(vars(a), params_fmkit=sum(p.numel() for p in ours.parameters()),
               params_torchcfm=sum(p.numel() for p in ref.parameters()))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
