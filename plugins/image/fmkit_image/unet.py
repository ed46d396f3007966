"""ADM/DDPM-style U-Net velocity field for images (Ho et al. 2020; Dhariwal & Nichol 2021).

Residual blocks with GroupNorm and a scale-shift time/class embedding, self-attention at chosen
resolutions, sinusoidal time embedding, an optional class embedding with one extra *null* row for
classifier-free guidance, dropout and channel multipliers. Written for fmkit's model contract:
``forward(x_t: {"x": [B,C,H,W]}, t: [B], cond: [B] int64 | None) -> {"x": [B,C,H,W]}``.
No data-dependent Python control flow in ``forward``, so ``torch.compile`` traces it in one graph.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from fmkit.plugin import DataInfo, ModelError
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class UNetOptions(BaseModel):
    """Size of the U-Net (the recipe's ``model:`` section)."""

    model_config = ConfigDict(extra="forbid")
    channels: int = Field(128, ge=8, description="base channel count")
    channel_mult: list[int] = Field(default_factory=lambda: [1, 2, 2, 2],
                                    description="channel multiplier per resolution level (one downsample between levels)")
    num_res_blocks: int = Field(2, ge=1, description="residual blocks per level")
    attention_resolutions: list[int] = Field(default_factory=lambda: [16],
                                             description="feature-map sizes (pixels) that get self-attention")
    num_heads: int = Field(4, ge=1, description="attention heads")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout inside residual blocks")
    norm_groups: int = Field(32, ge=1, description="GroupNorm groups (capped to a divisor of the channels)")
    class_conditional: bool = Field(True, description="embed the dataset's class labels (cond), with a null class")
    time_scale: float = Field(1000.0, gt=0, description="t in [0, 1] is multiplied by this before the sinusoids")


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [B, dim] of (scaled) times [B] (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _groups(channels: int, groups: int) -> int:
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, scale-shift by the embedding, GroupNorm-SiLU-dropout-conv (zero init), skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin, groups), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout, groups), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.drop(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual (output projection zero-init)."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise ModelError(f"attention at {channels} channels cannot split into {heads} heads",
                             where="model.num_heads", fix="pick num_heads dividing every level's channel count")
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(channels, groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """One resolution's blocks: a residual block, then attention if this resolution has it."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int, attn: bool, heads: int) -> None:
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim, dropout, groups)
        self.attn = Attention(cout, heads, groups) if attn else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class UNet(nn.Module):
    """The velocity (or x1) network for one image field ``x`` [B, C, H, W] (any C, H, W; 28, 32, 64 px tested).

    Downsampling is a stride-2 convolution, upsampling nearest-neighbour to the skip's size plus a
    convolution, so odd sizes (7x7 after two halvings of 28) work. With ``class_conditional`` and a
    dataset of K condition classes the label embedding has K + 1 rows: row K is the null class that
    the trainer's ``cond_dropout`` and classifier-free guidance use (``cond=None`` means null too).
    """

    def __init__(self, channels: int = 128, channel_mult: list[int] | tuple[int, ...] = (1, 2, 2, 2),
                 num_res_blocks: int = 2, attention_resolutions: list[int] | tuple[int, ...] = (16,),
                 num_heads: int = 4, dropout: float = 0.1, norm_groups: int = 32, class_conditional: bool = True,
                 time_scale: float = 1000.0, data_info: DataInfo | None = None,
                 predictions: dict[str, Literal["velocity", "x1"]] | None = None,
                 image_shape: tuple[int, int, int] | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        if data_info is not None:
            if "x" not in data_info.fields or len(data_info.fields["x"].shape) != 3:
                raise ModelError(f"the unet needs one image field 'x' of shape [C, H, W]; the dataset has "
                                 f"{ {k: f.shape for k, f in data_info.fields.items()} }", where="model",
                                 fix="use an image dataset (mnist, fashion_mnist, cifar10, image_folder)")
            image_shape = tuple(int(s) for s in data_info.fields["x"].shape)  # type: ignore[assignment]
            num_classes = data_info.num_cond_classes
        if image_shape is None:
            raise ModelError("the unet needs the image shape", where="model", fix="pass data_info or image_shape")
        c_in, size, _ = image_shape
        self.residual = (predictions or {}).get("x", "velocity") == "x1"  # x1-prediction: x_t + head
        self.time_scale = float(time_scale)
        self.channels = channels
        emb_dim = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = num_classes if class_conditional else None
        self.label_emb = nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes else None
        attn_at = set(int(a) for a in attention_resolutions)

        self.stem = nn.Conv2d(c_in, channels, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [channels]
        ch, res = channels, size
        for i, mult in enumerate(channel_mult):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(Level(ch, channels * mult, emb_dim, dropout, norm_groups, res in attn_at, num_heads))
                ch = channels * mult
                skips.append(ch)
            self.down.append(blocks)
            if i < len(channel_mult) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
                res = (res + 1) // 2
        self.mid1 = ResBlock(ch, ch, emb_dim, dropout, norm_groups)
        self.mid_attn = Attention(ch, num_heads, norm_groups)
        self.mid2 = ResBlock(ch, ch, emb_dim, dropout, norm_groups)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mult))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(Level(ch + skips.pop(), channels * mult, emb_dim, dropout, norm_groups,
                                    res in attn_at, num_heads))
                ch = channels * mult
            self.up.append(blocks)
            if i > 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
                res = res * 2
        self.out_norm = nn.GroupNorm(_groups(ch, norm_groups), ch)
        self.out = _zero(nn.Conv2d(ch, c_in, 3, padding=1))

    def embed(self, t: Tensor, cond: Tensor | None, batch: int) -> Tensor:
        """Time (+ class) embedding [B, 4 * channels]; ``cond=None`` takes the null class."""
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t
        emb = self.time_mlp(timestep_embedding(t * self.time_scale, self.channels))
        if self.label_emb is not None:
            if cond is None:
                cond = torch.full((batch,), self.num_classes, dtype=torch.long, device=emb.device)
            emb = emb + self.label_emb(cond.reshape(batch).long())
        return emb.to(self.stem.weight.dtype) if not torch.is_autocast_enabled() else emb

    def net(self, x: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The U-Net on a bare image batch [B, C, H, W] -> [B, C, H, W]."""
        emb = self.embed(t, cond, x.shape[0])
        h = self.stem(x)
        hs = [h]
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest")
                h = self.upsample[i](h)
        return self.out(F.silu(self.out_norm(h)))

    def forward(self, x_t: dict[str, Tensor], t: Tensor, cond: Tensor | None = None) -> dict[str, Tensor]:
        x = x_t["x"]
        out = self.net(x, t, cond)
        return {"x": x + out if self.residual else out}


def build_unet(data_info: DataInfo, predictions: dict[str, str] | None = None, **options) -> UNet:
    """Registry factory: the U-Net sized by the recipe, shaped by the dataset."""
    return UNet(data_info=data_info, predictions=predictions, **options)  # type: ignore[arg-type]
