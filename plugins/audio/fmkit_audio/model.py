"""A mel-spectrogram velocity network in the style of Matcha-TTS's decoder (Mehta et al. 2024).

A 1-D U-Net over frames: at each level residual conv blocks (conv-norm-Mish, time/condition added
in between) then transformer blocks (self-attention over frames + feed-forward), a stride-2 down
sample; a middle; and the mirror image up, with skip connections. Conditioning is one vector per
example: a sinusoidal time embedding, a class embedding with ``K + 1`` rows (row K is the null
class that classifier-free guidance trains and samples with) and an embedding of the target length.

Padding never reaches a real frame: activations are zeroed on padded frames before every
convolution, normalisation is per frame (LayerNorm over channels, not GroupNorm over time),
attention masks padded keys, and the output is zero on padded frames. Input/output: ``mel``
``[B, M, T]``, ``mask`` ``[B, 1, T]`` (bool, True = real frame), ``T`` a multiple of ``2**levels``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fmkit.plugin import DataInfo, GuidanceEmbedding, IntervalEmbedding, ModelError, State, embed_guidance
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn


class MelUNetOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channels: list[int] = Field(default_factory=lambda: [128, 256], min_length=1,
                                description="width of each U-Net level (each level after the first halves T)")
    res_blocks: int = Field(1, ge=1, description="residual conv blocks per level")
    attn_blocks: int = Field(1, ge=0, description="transformer blocks per level (Matcha-TTS: 1)")
    mid_blocks: int = Field(1, ge=0, description="residual + transformer pairs at the bottom")
    heads: int = Field(4, ge=1)
    kernel: int = Field(3, ge=1, description="conv kernel size (odd)")
    emb_dim: int = Field(256, ge=8, description="time/class/length embedding width")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    two_times: bool = Field(False, description="also take the other time r: the average velocity u(x, r, t) "
                            "(objective: meanflow); an embedding of r - t, zero at r = t, joins the time embedding")
    guidance_input: bool = Field(False, description="also take the guidance scale omega (objective meanflow with "
                                 "guidance_range): an embedding of omega - 1, zero at omega = 1, joins the time "
                                 "embedding")
    time_scale: float | None = Field(None, gt=0, description="t in [0, 1] is multiplied by this before the "
                                     "sinusoids; null: 1000 (MeanFlow's target holds d/dt of the network: the image "
                                     "MeanFlow recipe takes 50)")


def sinusoidal(x: Tensor, dim: int, scale: float = 1000.0) -> Tensor:
    """``[B] -> [B, dim]`` sin/cos features of ``scale * x`` (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    a = scale * x.float()[:, None] * freqs[None]
    return torch.cat([a.sin(), a.cos()], dim=1)


class FrameNorm(nn.Module):
    """LayerNorm over channels at each frame of ``[B, C, T]`` (no statistics across frames)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class ResBlock(nn.Module):
    """Matcha's ResnetBlock1D with per-frame norms: two conv-norm-Mish blocks, the embedding added between.

    Args:
        c_in: input channels of ``x`` [B, c_in, T].
        c_out: output channels [B, c_out, T] (a 1x1 conv on the skip when they differ from ``c_in``).
        emb: width of the per-example embedding [B, emb] (time, class, length).
        kernel: conv kernel size along frames (odd, so T is kept).
        dropout: dropout probability before the second conv.
    """

    def __init__(self, c_in: int, c_out: int, emb: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.conv1, self.norm1 = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2), FrameNorm(c_out)
        self.conv2, self.norm2 = nn.Conv1d(c_out, c_out, kernel, padding=kernel // 2), FrameNorm(c_out)
        self.emb = nn.Sequential(nn.Mish(), nn.Linear(emb, c_out))
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, m: Tensor, e: Tensor) -> Tensor:
        h = F.mish(self.norm1(self.conv1(x * m)))
        h = h + self.emb(e)[:, :, None]
        h = F.mish(self.norm2(self.conv2(self.drop(h) * m)))
        return (h + self.skip(x)) * m


class TransformerBlock(nn.Module):
    """Pre-norm self-attention over frames (padded keys masked) + GELU feed-forward."""

    def __init__(self, c: int, heads: int, dropout: float) -> None:
        super().__init__()
        if c % heads:
            raise ModelError(f"channels {c} are not divisible by heads {heads}", where="model.heads",
                             fix="choose heads that divide every entry of model.channels")
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(c), nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.norm2 = nn.LayerNorm(c)
        self.ff = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * c, c))
        self.dropout = dropout

    def forward(self, x: Tensor, m: Tensor) -> Tensor:
        b, c, t = x.shape
        h = x.transpose(1, 2)  # [B, T, C]
        q, k, v = self.qkv(self.norm1(h)).reshape(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn_mask = m.bool()[:, :, None, :]  # [B, 1, 1, T]: padded keys take no part
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, c))
        h = h + self.ff(self.norm2(h))
        return h.transpose(1, 2) * m


class Level(nn.Module):
    def __init__(self, c_in: int, c: int, opts: MelUNetOptions) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResBlock(c_in if i == 0 else c, c, opts.emb_dim, opts.kernel, opts.dropout)
                                 for i in range(opts.res_blocks))
        self.attn = nn.ModuleList(TransformerBlock(c, opts.heads, opts.dropout) for _ in range(opts.attn_blocks))

    def forward(self, x: Tensor, m: Tensor, e: Tensor) -> Tensor:
        for r in self.res:
            x = r(x, m, e)
        for a in self.attn:
            x = a(x, m)
        return x


class MelUNet(nn.Module):
    """``forward(x_t, t, cond) -> {"mel": velocity}`` for ``x_t = {"mel": [B,M,T], "mask": [B,1,T]}``; with
    ``two_times`` also ``r=`` [B], the average velocity u(x, r, t) for objective meanflow.

    Args:
        channels: width of each U-Net level; each level after the first halves the frames T.
        res_blocks: residual conv blocks per level.
        attn_blocks: transformer blocks per level.
        mid_blocks: residual + transformer pairs at the bottom.
        heads: attention heads (dividing every entry of ``channels``).
        kernel: conv kernel size along frames (odd).
        emb_dim: width of the time, class and length embeddings.
        dropout: dropout probability in the residual and transformer blocks.
        two_times: also take the other time ``r`` (an embedding of r - t joins the time embedding).
        guidance_input: also take the guidance scale omega (``forward(..., guidance=omega)``).
        time_scale: factor on t in [0, 1] before the sinusoidal features; None: 1000.
        data_info: the dataset's description: the number of mel bins M, condition classes, the frame
            multiple batches are padded to and ``max_frames`` (the length embedding's scale).
        predictions: the recipe path's prediction per field, passed by the registry; unused (the output is
            never made residual, whatever the path predicts).
    """

    def __init__(self, channels: list[int], res_blocks: int = 1, attn_blocks: int = 1, mid_blocks: int = 1,
                 heads: int = 4, kernel: int = 3, emb_dim: int = 256, dropout: float = 0.0, two_times: bool = False,
                 guidance_input: bool = False, time_scale: float | None = None,
                 *, data_info: DataInfo, predictions: dict[str, str] | None = None) -> None:
        super().__init__()
        opts = MelUNetOptions(channels=channels, res_blocks=res_blocks, attn_blocks=attn_blocks,
                              mid_blocks=mid_blocks, heads=heads, kernel=kernel, emb_dim=emb_dim, dropout=dropout)
        if "mel" not in data_info.fields:
            raise ModelError(f"mel_unet needs a 'mel' field, the data has {sorted(data_info.fields)}",
                             where="model.name", fix="use an audio dataset (fsdd, audio_folder, speechcommands)")
        if kernel % 2 == 0:
            raise ModelError(f"kernel {kernel} is even", where="model.kernel", fix="use an odd kernel (3, 5)")
        n_mels = int(data_info.fields["mel"].shape[0])
        self.levels_n = len(channels)
        fm = int(data_info.meta.get("frame_multiple", 1))
        if fm % 2 ** (self.levels_n - 1):
            raise ModelError(f"{self.levels_n} U-Net levels halve the frames {self.levels_n - 1} times, but the data "
                             f"pads batches to multiples of {fm}", where="model.channels",
                             fix=f"set data.frame_multiple to a multiple of {2 ** (self.levels_n - 1)}")
        self.max_frames = float(data_info.meta.get("max_frames", 1))
        k = data_info.num_cond_classes
        self.num_classes = k
        d = emb_dim
        self.t_mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.Mish(), nn.Linear(4 * d, d))
        self.len_mlp = nn.Sequential(nn.Linear(d, d), nn.Mish(), nn.Linear(d, d))
        self.interval = IntervalEmbedding(d) if two_times else None
        self.guidance_input = bool(guidance_input)
        self.guidance = GuidanceEmbedding(d) if guidance_input else None
        self.time_scale = 1000.0 if time_scale is None else float(time_scale)
        self.cls = nn.Embedding(k + 1, d) if k is not None else None  # row k: the null class (CFG)
        self.inp = nn.Conv1d(n_mels, channels[0], 1)
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        c_prev = channels[0]
        for i, c in enumerate(channels):
            self.down.append(Level(c_prev, c, opts))
            c_prev = c
            if i < len(channels) - 1:
                self.pool.append(nn.Conv1d(c, c, 3, stride=2, padding=1))
        self.mid = nn.ModuleList(Level(c_prev, c_prev, opts.model_copy(update={"res_blocks": 1, "attn_blocks": 1}))
                                 for _ in range(mid_blocks))
        self.up = nn.ModuleList()
        self.unpool = nn.ModuleList()
        for i in reversed(range(len(channels))):
            c = channels[i]
            self.up.append(Level(c_prev + c, c, opts))
            c_prev = c
            if i > 0:
                self.unpool.append(nn.Conv1d(c, channels[i - 1], 3, padding=1))
                c_prev = channels[i - 1]
        self.out_norm = FrameNorm(channels[0])
        self.out = nn.Conv1d(channels[0], n_mels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed(self, t: Tensor, cond: Tensor | None, mask: Tensor, r: Tensor | None = None,
              guidance: Tensor | None = None) -> Tensor:
        d = self.t_mlp[0].in_features
        e = self.t_mlp(sinusoidal(t, d, scale=self.time_scale))
        if r is not None:
            if self.interval is None:
                raise ModelError("this mel_unet was built for one time (flow matching), and was called with a "
                                 "second time r (the average velocity of objective meanflow)",
                                 where="model.two_times", fix="set `two_times: true` in the recipe's model section")
            e = e + self.interval(r - t)
        g = embed_guidance(self.guidance, guidance, "mel_unet")
        if g is not None:
            e = e + g
        length = mask.float().sum(dim=(1, 2)) / self.max_frames
        e = e + self.len_mlp(sinusoidal(length, d, scale=100.0))
        if self.cls is not None:
            if cond is None:
                cond = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            e = e + self.cls(cond.long())
        return e

    def forward(self, x_t: State, t: Tensor, cond: Tensor | None = None, *, r: Tensor | None = None,
                guidance: Tensor | None = None) -> State:
        x = x_t["mel"]
        mask = x_t.get("mask")
        if mask is None:
            mask = torch.ones(x.shape[0], 1, x.shape[-1], dtype=torch.bool, device=x.device)
        if x.shape[-1] % 2 ** (self.levels_n - 1):
            raise ModelError(f"{x.shape[-1]} frames is not a multiple of {2 ** (self.levels_n - 1)}",
                             where="model", fix="pad batches to a multiple of 2**(levels-1) (data.frame_multiple)")
        e = self.embed(t, cond, mask, r, guidance)
        m = mask.to(x.dtype)
        masks = [m]
        h = self.inp(x * m) * m
        skips = []
        for i, level in enumerate(self.down):
            h = level(h, masks[-1], e)
            skips.append(h)
            if i < len(self.pool):
                h = self.pool[i](h * masks[-1])
                masks.append(masks[-1][:, :, ::2])
                h = h * masks[-1]
        for level in self.mid:
            h = level(h, masks[-1], e)
        for j, level in enumerate(self.up):
            h = level(torch.cat([h, skips.pop()], dim=1), masks[-1], e)
            if j < len(self.unpool):
                masks.pop()
                h = F.interpolate(h, scale_factor=2, mode="nearest") * masks[-1]
                h = self.unpool[j](h) * masks[-1]
        v = self.out(F.mish(self.out_norm(h)) * m) * m
        return {"mel": v}
