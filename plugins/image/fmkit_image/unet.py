"""ADM/DDPM-style U-Net velocity field for images (Ho et al. 2020; Dhariwal & Nichol 2021).

Residual blocks with GroupNorm and a scale-shift time/class embedding, self-attention at chosen
resolutions, sinusoidal time embedding, an optional class embedding with one extra *null* row for
classifier-free guidance, dropout and channel multipliers. Written for fmkit's model contract:
``forward(x_t: {"x": [B,C,H,W]}, t: [B], cond: [B] int64 | None) -> {"x": [B,C,H,W]}``; with
``two_times`` also ``r=`` [B] (u(x, r, t) for objective meanflow, fmkit's two-time contract).
No data-dependent Python control flow in ``forward``, so ``torch.compile`` traces it in one graph.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from fmkit.plugin import DataInfo, ModelError
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator
from torch import Tensor, nn

from fmkit_image.embedding import ConditionEmbedder


class UNetOptions(BaseModel):
    """Size of the U-Net (the recipe's ``model:`` section)."""

    model_config = ConfigDict(extra="forbid")
    channels: int = Field(128, ge=8, description="base channel count")
    channel_mult: list[PositiveInt] = Field(default_factory=lambda: [1, 2, 2, 2], min_length=1,
                                            description="channel multiplier per resolution level (one downsample "
                                            "between levels)")
    num_res_blocks: int = Field(2, ge=1, description="residual blocks per level")
    attention_resolutions: list[PositiveInt] = Field(default_factory=lambda: [16],
                                                     description="feature-map sizes (pixels, the height) that get "
                                                     "self-attention; the middle block always has it")
    num_heads: int = Field(4, ge=1, description="attention heads")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout inside residual blocks")
    norm_groups: int = Field(32, ge=1, description="GroupNorm groups; channels must be a multiple of it (below it, "
                             "a layer of C channels takes a divisor of C)")
    class_conditional: bool = Field(True, description="embed the dataset's class labels (cond), with a null class")
    time_scale: float = Field(1000.0, gt=0, description="t in [0, 1] is multiplied by this before the sinusoids")
    two_times: bool = Field(False, description="also take the other time r: the average velocity u(x, r, t) "
                            "(objective: meanflow); an embedding of r - t, zero at r = t, joins the time embedding")
    guidance_input: bool = Field(False, description="also take the guidance scale omega (objective meanflow "
                                 "with guidance_range): an embedding of omega - 1, zero at omega = 1, joins the time "
                                 "embedding")

    @model_validator(mode="after")
    def _sizes_fit(self) -> UNetOptions:
        # what the image size does not decide; the rest is checked when the model meets the data (check_sizes)
        problem = _groups_problem(self.channels, self.norm_groups) or \
            _heads_problem([self.channels * self.channel_mult[-1]], self.num_heads, "the middle block")
        if problem:
            raise ValueError(f"{problem[0]}; fix: {problem[1]}")
        return self


def _groups_problem(channels: int, groups: int) -> tuple[str, str] | None:
    if channels > groups and channels % groups:
        divisors = [g for g in range(groups, 0, -1) if channels % g == 0][:2]
        fix = (f"make channels a multiple of {groups} (e.g. {channels - channels % groups or groups} or "
               f"{channels - channels % groups + groups}) or set norm_groups to a divisor of {channels} "
               f"(e.g. {' or '.join(map(str, divisors))})")
        return f"channels {channels} do not split into norm_groups {groups} GroupNorm groups", fix
    return None


def _heads_problem(widths: list[int], heads: int, where: str) -> tuple[str, str] | None:
    bad = sorted({c for c in widths if c % heads})
    if bad:
        g = math.gcd(*widths)
        near = sorted((h for h in range(1, g + 1) if g % h == 0), key=lambda h: (abs(h - heads), h))[:2]
        fix = (f"pick num_heads dividing {', '.join(map(str, sorted(set(widths))))} "
               f"(e.g. {' or '.join(map(str, sorted(near)))})")
        return f"attention at {bad[0]} channels ({where}) cannot split into num_heads {heads} heads", fix
    return None


def level_sizes(size: int, levels: int) -> list[int]:
    """Feature-map sizes (pixels) of the U-Net's levels for an image of ``size``: each downsample halves,
    rounding up (28 -> 14 -> 7 -> 4)."""
    out = [size]
    for _ in range(levels - 1):
        out.append((out[-1] + 1) // 2)
    return out


def check_sizes(image_shape: tuple[int, int, int], channels: int, channel_mult, attention_resolutions,
                num_heads: int, norm_groups: int) -> None:
    """The U-Net's options against the image: a :class:`ModelError` naming the option and a fix, before any
    layer is built (not a torch error in the first forward, nor a silent no-op).

    Args:
        image_shape: the image field's shape ``(C, H, W)``.
        channels: base channel count (a level's width is ``channels * mult``).
        channel_mult: channel multiplier per level; one stride-2 downsample between levels.
        attention_resolutions: feature-map heights (pixels) that get self-attention.
        num_heads: attention heads, dividing the width of every attention level and of the middle.
        norm_groups: GroupNorm groups.

    Raises:
        ModelError: an option the image or the other options rule out, naming the option and a fix.
    """
    _, h, w = image_shape
    mult = list(channel_mult)
    if not mult or any(int(m) < 1 for m in mult):
        raise ModelError(f"channel_mult {mult} needs at least one entry, each >= 1", where="model.channel_mult",
                         fix="e.g. [1, 2, 2] for 28 px, [1, 2, 2, 2] for 32 px")
    sizes = level_sizes(min(h, w), len(mult))
    if len(mult) > 1 and sizes[-2] < 2:
        most = next(i for i, s in enumerate(sizes) if s < 2)
        raise ModelError(f"channel_mult has {len(mult)} levels: {len(mult) - 1} halvings of a {h}x{w} image reach "
                         f"{' -> '.join(map(str, sizes))} px, and a level below 2 px has nothing to downsample",
                         where="model.channel_mult", fix=f"use at most {most + 1} levels for {h}x{w} images "
                         f"(or larger images)")
    sizes = level_sizes(h, len(mult))
    unreachable = sorted({int(r) for r in attention_resolutions} - set(sizes))
    if unreachable:
        raise ModelError(f"attention_resolutions {unreachable} are not feature-map sizes of this U-Net: a {h}x{w} "
                         f"image with {len(mult)} levels has maps of {', '.join(map(str, sizes))} px",
                         where="model.attention_resolutions",
                         fix=f"pick sizes among {sizes} (or [] for attention in the middle block only)")
    problem = _groups_problem(channels, norm_groups)
    if problem:
        raise ModelError(problem[0], where="model.norm_groups", fix=problem[1])
    attn = {int(r) for r in attention_resolutions}
    widths = [channels * m for m, s in zip(mult, sizes) if s in attn] + [channels * mult[-1]]
    problem = _heads_problem(widths, num_heads, "an attention level")
    if problem:
        raise ModelError(problem[0], where="model.num_heads", fix=problem[1])


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
    """GroupNorm-SiLU-conv, scale-shift by the embedding, GroupNorm-SiLU-dropout-conv (zero init), skip.

    Args:
        cin: input channels of ``x`` [B, cin, H, W].
        cout: output channels [B, cout, H, W] (a 1x1 conv on the skip when they differ from ``cin``).
        emb_dim: width of the time/class embedding [B, emb_dim].
        dropout: dropout probability before the second conv.
        groups: GroupNorm groups (a divisor of the channel count below it).
    """

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
        # [B, 3C, H, W] -> q, k, v [B, heads, HW, C/heads] with a unit stride along the head dim: one copy here
        # lets SDPA take its fused kernels (on a CPU, transposed views sent it to the slower math path;
        # measured in bench/README.md)
        qkv = self.qkv(self.norm(x)).reshape(b, 3 * self.heads, c // self.heads, h * w).transpose(-1, -2).contiguous()
        q, k, v = qkv.reshape(b, 3, self.heads, h * w, c // self.heads).unbind(1)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Level(nn.Module):
    """One resolution's blocks: a residual block, then attention if this resolution has it.

    Args:
        cin: input channels [B, cin, H, W].
        cout: output channels [B, cout, H, W].
        emb_dim: width of the time/class embedding [B, emb_dim].
        dropout: dropout probability in the residual block.
        groups: GroupNorm groups.
        attn: add self-attention after the residual block.
        heads: attention heads (dividing ``cout``).
    """

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int, attn: bool, heads: int) -> None:
        super().__init__()
        self.res = ResBlock(cin, cout, emb_dim, dropout, groups)
        self.attn = Attention(cout, heads, groups) if attn else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class UNet(ConditionEmbedder, nn.Module):
    """The velocity (or x1) network for one image field ``x`` [B, C, H, W] (any C, H, W; 28, 32, 64 px tested).

    Downsampling is a stride-2 convolution, upsampling nearest-neighbour to the skip's size plus a
    convolution, so odd sizes (7x7 after two halvings of 28) work. With ``class_conditional`` and a
    dataset of K condition classes the label embedding has K + 1 rows: row K is the null class that
    the trainer's ``cond_dropout`` and classifier-free guidance use (``cond=None`` means null too).

    Args:
        channels: base channel count (a level's width is ``channels * mult``).
        channel_mult: channel multiplier per resolution level; one downsample between levels.
        num_res_blocks: residual blocks per level.
        attention_resolutions: feature-map heights (pixels) that get self-attention; the middle always has it.
        num_heads: attention heads.
        dropout: dropout probability inside residual blocks.
        norm_groups: GroupNorm groups.
        class_conditional: embed the condition classes (with a null class); False: unconditional.
        time_scale: factor on t in [0, 1] before the sinusoidal features.
        two_times: also take the other time ``r`` (an embedding of r - t joins the time embedding).
        guidance_input: also take the guidance scale omega (``forward(..., guidance=omega)``).
        data_info: the dataset's description: the image shape ``(C, H, W)`` of field ``x`` and the number of
            condition classes; when given, it overrides ``image_shape`` and ``num_classes``.
        predictions: the recipe path's prediction per field; ``{"x": "x1"}`` makes the output x_t + net(...).
        image_shape: ``(C, H, W)``, without ``data_info``.
        num_classes: K condition classes, without ``data_info``; None: unconditional.
    """

    model_key = "unet"

    def __init__(self, channels: int = 128, channel_mult: list[int] | tuple[int, ...] = (1, 2, 2, 2),
                 num_res_blocks: int = 2, attention_resolutions: list[int] | tuple[int, ...] = (16,),
                 num_heads: int = 4, dropout: float = 0.1, norm_groups: int = 32, class_conditional: bool = True,
                 time_scale: float = 1000.0, two_times: bool = False, guidance_input: bool = False,
                 data_info: DataInfo | None = None,
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
        check_sizes(image_shape, channels, channel_mult, attention_resolutions, num_heads, norm_groups)
        c_in, size, _ = image_shape
        self.residual = (predictions or {}).get("x", "velocity") == "x1"  # x1-prediction: x_t + head
        self.channels = channels
        emb_dim = 4 * channels
        self.init_embedding(emb_dim, channels, num_classes if class_conditional else None, two_times, time_scale,
                            guidance_input)
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

    def net(self, x: Tensor, t: Tensor, cond: Tensor | None = None, r: Tensor | None = None,
            guidance: Tensor | None = None) -> Tensor:
        """The U-Net on a bare image batch [B, C, H, W] -> [B, C, H, W]."""
        emb = self.embed(t, cond, x.shape[0], r, guidance)
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

    def forward(self, x_t: dict[str, Tensor], t: Tensor, cond: Tensor | None = None, *,
                r: Tensor | None = None, guidance: Tensor | None = None) -> dict[str, Tensor]:
        x = x_t["x"]
        out = self.net(x, t, cond, r, guidance)
        return {"x": x + out if self.residual else out}


def build_unet(data_info: DataInfo, predictions: dict[str, str] | None = None, **options) -> UNet:
    """Registry factory: the U-Net sized by the recipe, shaped by the dataset."""
    return UNet(data_info=data_info, predictions=predictions, **options)  # type: ignore[arg-type]
