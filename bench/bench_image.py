"""Images/s of fmkit's U-Net through ``fmkit.Trainer`` against TorchCFM's ``UNetModelWrapper`` of the same
configuration in a bare loop: training and sampling, same batch, interleaved rounds, one process; CPU or CUDA.

    python bench/bench_image.py                                   # MNIST-CPU size, writes bench/results/image_speed.*
    python bench/bench_image.py --config cifar10 --device cuda --batch 128 --name image_speed_cuda
    python bench/bench_image.py --quick --out /tmp/x               # seconds: checks the script
    python bench/bench_image.py --profile fmkit                    # torch.profiler op table of one engine's steps

What is matched (asserted: parameter counts within 2 %):
  architecture  the recipe's ``model:`` section on both sides: channels, channel_mult, num_res_blocks,
                attention_resolutions (TorchCFM's ``image_size // res`` convention), num_heads, dropout,
                scale-shift embedding (TorchCFM ``use_scale_shift_norm=True``, what fmkit's ResBlock does),
                class embedding with K + 1 rows (the null class of classifier-free guidance)
  training      x1 = the same uint8 images scaled to [-1, 1] (synthetic: only shapes matter for speed),
                x0 ~ N(0, I), t ~ U(0, 1), x_t = t x1 + (1 - t) x0, target x1 - x0, MSE, labels dropped to the
                null class with p = 0.1, AdamW (fused kernel, lr 1e-3, constant), grad clip 1.0, EMA 0.999
                (``torch._foreach_lerp_`` in the bare loop, what fmkit's EMA does); fmkit keeps its per-step
                lr update, NaN check and in-memory logging (``run_dir=None``), as a library user gets it
  sampling      ``--sample-n`` images, midpoint 10 steps (20 NFE), classifier-free guidance 2.0 as one batch of
                2B, the EMA weights, no_grad; fmkit through ``Trainer.sample``, TorchCFM in a bare midpoint loop
  precision     fp32 eager on both sides by default; ``--precision bf16`` puts both under bf16 autocast,
                ``--compile`` compiles both models; on CUDA fmkit's Trainer also uses channels-last (its default
                there), the bare loop keeps TorchCFM's NCHW (``--channels-last`` gives it channels-last too)

Per round each engine trains ``--steps`` steps, then each samples once; the order alternates every round.
The ratio (fmkit speed / TorchCFM speed) is the median of per-round paired ratios with a bootstrap 95 %
interval of that median; the ratio of the fastest rounds (min time / min time) is beside it. On a CPU the
speeds come from the process's CPU time (steady on a shared machine; wall time is in the JSON), on CUDA
from wall time with ``torch.cuda.synchronize()`` closing every timed block.
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmkit  # noqa: E402
from _common import median, table, write_results  # noqa: E402
from fmkit.flow.solvers import FixedStepSolver  # noqa: E402
from fmkit_image.data import ImageDataset  # noqa: E402
from fmkit_image.unet import UNet  # noqa: E402

CONFIGS = {  # the recipes' model sections (recipes/images_*.yaml)
    "mnist_cpu": dict(shape=(1, 28, 28), channels=32, channel_mult=[1, 2, 2], num_res_blocks=1,
                      attention_resolutions=[7], num_heads=4, dropout=0.0),
    "mnist": dict(shape=(1, 28, 28), channels=32, channel_mult=[1, 2, 2], num_res_blocks=1,
                  attention_resolutions=[14], num_heads=4, dropout=0.1),
    "cifar10": dict(shape=(3, 32, 32), channels=128, channel_mult=[1, 2, 2, 2], num_res_blocks=2,
                    attention_resolutions=[16], num_heads=4, dropout=0.1),
}
K = 10  # classes
P_DROP, GUIDANCE, EMA_DECAY, LR, CLIP, SOLVER_STEPS = 0.1, 2.0, 0.999, 1e-3, 1.0, 10


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(dev: torch.device, fn) -> tuple[float, float]:
    """(wall s, process CPU s) of fn(), the device synchronized at both ends."""
    sync(dev)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(dev)
    return time.perf_counter() - w0, time.process_time() - c0


class Fmkit:
    """fmkit's U-Net trained and sampled by ``fmkit.Trainer`` (a library user's code)."""

    name = "fmkit"

    def __init__(self, a, cfg: dict, ds: ImageDataset) -> None:
        torch.manual_seed(0)
        self.model = UNet(data_info=ds.info, **cfg)
        opts = fmkit.TrainerOptions(
            steps=10**9, batch_size=a.batch, lr=LR, warmup_steps=0, schedule="constant", grad_clip=CLIP,
            ema_decay=EMA_DECAY, cond_dropout=P_DROP, progress=False, device=a.device, checkpoint_every=10**9,
            precision=a.precision, compile=a.compile, cpu_threads=a.threads if a.device == "cpu" else None)
        ev = fmkit.EvalOptions(every=0, num_samples=a.sample_n, batch_size=a.sample_n, guidance_scale=GUIDANCE)
        self.trainer = fmkit.Trainer(self.model, ds, options=opts, eval_options=ev, run_dir=None, seed=0)
        self.solver = FixedStepSolver("midpoint", SOLVER_STEPS)

    def train(self, steps: int) -> None:
        self.trainer.fit(until=self.trainer.step + steps)

    def sample(self, n: int) -> None:
        self.trainer.sample(n, solver=self.solver)


def torchcfm_unet():
    """TorchCFM's ``UNetModelWrapper``. Its package ``__init__`` imports POT for the OT sampler, which the U-Net
    does not use: where POT is not installed (the GPU machine) an empty stand-in module lets the import pass."""
    import importlib.util
    import types

    if importlib.util.find_spec("ot") is None:
        sys.modules.setdefault("ot", types.ModuleType("ot"))
    from torchcfm.models.unet.unet import UNetModelWrapper

    return UNetModelWrapper


class TorchCFM:
    """TorchCFM's ``UNetModelWrapper`` of the same size in a hand-written CFM loop (its examples' loop, with
    the same optimizer, clipping, EMA, label dropout and guided midpoint sampling as fmkit's run)."""

    name = "torchcfm"

    def __init__(self, a, cfg: dict, ds: ImageDataset) -> None:
        UNetModelWrapper = torchcfm_unet()
        self.dev = dev = torch.device(a.device)
        torch.manual_seed(0)
        c, h, w = ds.info.fields["x"].shape
        self.model = UNetModelWrapper(
            dim=(c, h, w), num_channels=cfg["channels"], num_res_blocks=cfg["num_res_blocks"],
            channel_mult=cfg["channel_mult"], attention_resolutions=",".join(str(r) for r in cfg["attention_resolutions"]),
            num_heads=cfg["num_heads"], dropout=cfg["dropout"], use_scale_shift_norm=True,
            class_cond=True, num_classes=K + 1).to(dev)
        if a.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.model).requires_grad_(False)
        self.params = list(self.model.parameters())
        self.ema_params = list(self.ema.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=LR, betas=(0.9, 0.999), weight_decay=0.0, fused=True)
        self.net = torch.compile(self.model) if a.compile else self.model
        self.ema_net = torch.compile(self.ema) if a.compile else self.ema
        self.images = ds.images.to(dev)  # uint8, scaled per batch as fmkit's dataset does
        self.labels = ds.labels.to(dev)
        self.batch, self.shape = a.batch, (c, h, w)
        self.autocast = a.precision == "bf16"
        self.g = torch.Generator().manual_seed(0)
        self.perm, self.pos = torch.randperm(len(self.images), generator=self.g), 0

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pos + self.batch > len(self.images):
            self.perm, self.pos = torch.randperm(len(self.images), generator=self.g), 0
        idx = self.perm[self.pos:self.pos + self.batch].to(self.dev)
        self.pos += self.batch
        return ImageDataset.scale(self.images[idx]), self.labels[idx]

    def train(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            x1, y = self._next()
            y = torch.where(torch.rand(y.shape[0], device=self.dev) < P_DROP, torch.full_like(y, K), y)
            x0 = torch.randn_like(x1)
            t = torch.rand(x1.shape[0], device=self.dev)
            tb = t[:, None, None, None]
            xt = tb * x1 + (1 - tb) * x0
            with torch.autocast(self.dev.type, torch.bfloat16, enabled=self.autocast):
                v = self.net(t, xt, y)
            loss = (v.float() - (x1 - x0)).square().mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, CLIP)
            self.opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(self.ema_params, self.params, 1.0 - EMA_DECAY)

    @torch.no_grad()
    def sample(self, n: int) -> None:
        self.ema.eval()
        y = torch.randint(0, K, (n,), device=self.dev)
        y2 = torch.cat([y, torch.full_like(y, K)])
        x = torch.randn(n, *self.shape, device=self.dev)

        def v(x: torch.Tensor, t: float) -> torch.Tensor:
            tt = torch.full((2 * n,), t, device=self.dev)
            with torch.autocast(self.dev.type, torch.bfloat16, enabled=self.autocast):
                out = self.ema_net(tt, torch.cat([x, x]), y2).float()
            return out[n:] + GUIDANCE * (out[:n] - out[n:])

        dt = 1.0 / SOLVER_STEPS
        for i in range(SOLVER_STEPS):
            t = i * dt
            x = x + dt * v(x + 0.5 * dt * v(x, t), t + 0.5 * dt)
        x.cpu()


def synthetic(cfg: dict, n: int) -> ImageDataset:
    c, h, w = cfg["shape"]
    g = torch.Generator().manual_seed(0)
    return ImageDataset(torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g),
                        torch.randint(0, K, (n,), generator=g), name="synthetic")


def bootstrap_median(xs: list[float], reps: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median of ``xs``."""
    rng = random.Random(seed)
    meds = sorted(median(rng.choices(xs, k=len(xs))) for _ in range(reps))
    return meds[int(0.025 * reps)], meds[int(0.975 * reps) - 1]


def summarise(times: dict[str, list[float]], images: int) -> dict:
    f, r = times["fmkit"], times["torchcfm"]
    paired = [rt / ft for ft, rt in zip(f, r, strict=True)]  # fmkit speed / TorchCFM speed, same round
    lo, hi = bootstrap_median(paired)
    return {"images_per_s": {k: images / median(v) for k, v in times.items()},
            "images_per_s_best": {k: images / min(v) for k, v in times.items()},
            "ratio_median": median(paired), "ratio_ci95": [lo, hi], "ratio_best": min(r) / min(f),
            "paired_ratios": paired, "seconds": times}


def profile(a, engines: dict) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprof

    e = engines[a.profile]
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if a.device.startswith("cuda") else [])
    with tprof(activities=acts) as p:
        e.train(a.steps) if a.profile_phase == "train" else e.sample(a.sample_n)
        sync(torch.device(a.device))
    key = "cuda_time_total" if a.device.startswith("cuda") else "self_cpu_time_total"
    print(p.key_averages().table(sort_by=key, row_limit=30))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=list(CONFIGS), default="mnist_cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="training steps per engine per round")
    p.add_argument("--sample-n", type=int, default=16, help="images per sampling call (a batch of 2n under guidance)")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3, help="training steps (and one sampling call) before timing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (1 = steadier on a shared machine)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--compile", action="store_true", help="torch.compile both models")
    p.add_argument("--channels-last", action="store_true", help="channels-last TorchCFM model too (fmkit: its "
                   "Trainer's default, on for CUDA)")
    p.add_argument("--no-sampling", dest="sampling", action="store_false")
    p.add_argument("--quick", action="store_true", help="a check of the script: 2 rounds of 1 step, 4 images")
    p.add_argument("--profile", choices=["fmkit", "torchcfm"], help="op table of one engine's --steps training steps (or one sampling call: --profile-phase sample); "
                   "no results")
    p.add_argument("--profile-phase", choices=["train", "sample"], default="train")
    p.add_argument("--budget", type=float, default=None, help="stop after the round that passes this many seconds")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    p.add_argument("--name", default="image_speed")
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.steps, a.sample_n, a.warmup, a.batch = 2, 1, 4, 1, min(a.batch, 8)
    dev = torch.device(a.device)
    if dev.type == "cpu":
        torch.set_num_threads(a.threads)
    cfg = dict(CONFIGS[a.config])
    shape = cfg.pop("shape")
    ds = synthetic({"shape": shape}, max(4 * a.batch, 512))
    engines = {"fmkit": Fmkit(a, cfg, ds), "torchcfm": TorchCFM(a, cfg, ds)}
    params = {n: sum(q.numel() for q in e.model.parameters()) for n, e in engines.items()}
    print(f"{a.config} {shape}: parameters fmkit {params['fmkit']:,}, torchcfm {params['torchcfm']:,}", flush=True)
    assert abs(params["fmkit"] / params["torchcfm"] - 1) < 0.02, f"not the same size: {params}"
    for e in engines.values():  # warm-up: allocator, autograd caches, compilation
        e.train(a.warmup)
        if a.sampling:
            e.sample(a.sample_n)
    if a.profile:
        profile(a, engines)
        return {}

    names = list(engines)
    wall = {"train": {n: [] for n in names}, "sample": {n: [] for n in names}}
    cpu = {"train": {n: [] for n in names}, "sample": {n: [] for n in names}}
    t_start = time.perf_counter()
    done = 0
    for r in range(a.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for phase in ("train", "sample") if a.sampling else ("train",):
            for n in order:
                e = engines[n]
                fn = (lambda e=e: e.train(a.steps)) if phase == "train" else (lambda e=e: e.sample(a.sample_n))
                w, c = timed(dev, fn)
                wall[phase][n].append(w)
                cpu[phase][n].append(c)
        done = r + 1
        line = ", ".join(f"{ph} " + " / ".join(f"{n} {(a.steps * a.batch if ph == 'train' else a.sample_n) / cpu[ph][n][-1]:.1f}"
                                                for n in names) for ph in cpu if cpu[ph][names[0]])
        print(f"round {r + 1}/{a.rounds} (images/s by CPU time): {line}", flush=True)
        if a.budget is not None and time.perf_counter() - t_start > a.budget:
            print(f"budget of {a.budget:.0f} s reached after {done} rounds", flush=True)
            break
    clock = "wall" if dev.type == "cuda" else "cpu"
    results = {}
    for phase in wall:
        if not wall[phase]["fmkit"]:
            continue
        images = a.steps * a.batch if phase == "train" else a.sample_n
        results[phase] = {"cpu_time": summarise(cpu[phase], images), "wall_time": summarise(wall[phase], images)}
    md = render(a, shape, params, results, clock, done)
    print(md)
    config = {k: v for k, v in vars(a).items() if not isinstance(v, Path)}
    if not a.quick or a.out is not None:
        j, m = write_results(a.name, {"config": config, "model": cfg, "shape": list(shape), "params": params,
                                      "rounds_done": done, "clock": clock, "results": results}, md, a.out)
        print(f"wrote {j} and {m}")
    return results


def render(a, shape, params, results: dict, clock: str, done: int) -> str:
    where = f"{a.device} ({torch.cuda.get_device_name(0)})" if a.device.startswith("cuda") else \
        f"CPU, {a.threads} torch thread(s)"
    layout = ""
    if a.device.startswith("cuda"):
        layout = (" fmkit's Trainer uses channels-last on CUDA (its default); TorchCFM's loop "
                  f"{'too (--channels-last)' if a.channels_last else 'keeps NCHW, as its examples do'}.")
    lines = [(f"Config `{a.config}` {tuple(shape)}: {params['fmkit']:,} parameters (fmkit) vs {params['torchcfm']:,} "
              f"(TorchCFM); batch {a.batch}, {a.steps} training steps per engine per round, sampling {a.sample_n} "
              f"images (midpoint {SOLVER_STEPS} steps, guidance {GUIDANCE}: {SOLVER_STEPS * 2} model calls on "
              f"batch {2 * a.sample_n}), {done} interleaved rounds (+{a.warmup} warm-up steps), {where}, "
              f"precision {a.precision}{', compiled' if a.compile else ''}.{layout}"),
             (f"Speeds from {'wall' if clock == 'wall' else 'process CPU'} time. Ratio = fmkit images/s / TorchCFM "
              "images/s: median of per-round paired ratios [bootstrap 95 % CI]; 'best' = fastest round / fastest "
              "round."), ""]
    rows = []
    for phase, r in results.items():
        for ck in ((f"{clock}_time",) + (("wall_time",) if clock == "cpu" else ("cpu_time",))):
            s = r[ck]
            lo, hi = s["ratio_ci95"]
            rows.append([phase, ck.replace("_", " "), f"{s['images_per_s']['fmkit']:.1f}",
                         f"{s['images_per_s']['torchcfm']:.1f}", f"{s['ratio_median']:.3f} [{lo:.3f}, {hi:.3f}]",
                         f"{s['ratio_best']:.3f}"])
    lines.append(table(["phase", "clock", "fmkit img/s", "TorchCFM img/s", "ratio (median) [95% CI]", "ratio (best)"],
                       rows))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
