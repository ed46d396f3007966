"""Diffusion Transformer velocity field for images: DiT (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers"), the backbone family of SiT, SD3 and Flux.

Patchify (p x p patches -> tokens), 2-D sin-cos or learned positions, transformer blocks with adaLN-Zero
modulation by the time/class embedding (shared with the U-Net: fmkit_image.embedding, a null class row for
classifier-free guidance), final adaLN + linear unpatchify. adaLN-Zero initialisation: every block's gates and
the output head start at zero, so each block is the identity and the initial output is exactly 0 (x_t for
x1-prediction). fmkit's model contract: ``forward(x_t: {"x": [B,C,H,W]}, t: [B], cond: [B] int64 | None) ->
{"x": [B,C,H,W]}``; with ``two_times`` also ``r=`` [B] (u(x, r, t) for objective meanflow).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from fmkit.plugin import DataInfo, ModelError
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from fmkit_image.embedding import ConditionEmbedder

TIME_FEATURES = 256  # sinusoidal features of t before the time MLP (DiT's frequency_embedding_size)


class DiTOptions(BaseModel):
    """Size of the DiT (the recipe's ``model:`` section)."""

    model_config = ConfigDict(extra="forbid")
    patch_size: int = Field(2, ge=1, description="side of the square patches (pixels) that become tokens; the "
                            "image's height and width must be multiples of it")
    hidden: int = Field(256, ge=8, description="token width")
    depth: int = Field(6, ge=1, description="transformer blocks")
    num_heads: int = Field(4, ge=1, description="attention heads; hidden must be a multiple of it")
    mlp_ratio: float = Field(4.0, gt=0, description="width of each block's MLP, as a multiple of hidden")
    positions: Literal["sincos", "learned"] = Field("sincos", description="fixed 2-D sin-cos positions, or learned "
                                                    "ones (started from the sin-cos table)")
    class_conditional: bool = Field(True, description="embed the dataset's class labels (cond), with a null class")
    time_scale: float = Field(1000.0, gt=0, description="t in [0, 1] is multiplied by this before the sinusoids")
    two_times: bool = Field(False, description="also take the other time r: the average velocity u(x, r, t) "
                            "(objective: meanflow); an embedding of r - t, zero at r = t, joins the time embedding")
    guidance_input: bool = Field(False, description="also take the guidance scale omega (objective meanflow "
                                 "with guidance_range): an embedding of omega - 1, zero at omega = 1, joins the time "
                                 "embedding")

    @model_validator(mode="after")
    def _widths_fit(self) -> DiTOptions:
        # what the image size does not decide; the patch against the image is checked when the model meets the data
        problem = _width_problem(self.hidden, self.num_heads)
        if problem:
            raise ValueError(f"{problem[1]}; fix: {problem[2]}")
        return self


def _width_problem(hidden: int, heads: int) -> tuple[str, str, str] | None:
    """(option, what, fix) for a token width that the heads or the 2-D sin-cos table cannot split, else None."""
    if hidden % heads:
        near = sorted((h for h in range(1, hidden + 1) if hidden % h == 0), key=lambda h: (abs(h - heads), h))[:2]
        m = math.lcm(heads, 4)  # hidden also splits into the sin-cos table's four parts
        return ("num_heads", f"hidden {hidden} does not split into num_heads {heads} heads",
                f"pick num_heads dividing {hidden} (e.g. {' or '.join(map(str, sorted(near)))}) or make hidden a "
                f"multiple of {m} (e.g. {hidden - hidden % m or m} or {hidden - hidden % m + m})")
    if hidden % 4:
        return ("hidden", f"hidden {hidden} is not a multiple of 4, which the 2-D sin-cos position table needs (a "
                "sine and a cosine per axis; learned positions start from it)",
                f"make hidden a multiple of 4 (e.g. {hidden - hidden % 4 or 4} or {hidden - hidden % 4 + 4})")
    return None


def check_patch(image_shape: tuple[int, int, int], patch_size: int) -> None:
    """A :class:`ModelError` naming ``model.patch_size`` when the image does not tile into patches."""
    _, h, w = image_shape
    if h % patch_size or w % patch_size:
        g = math.gcd(h, w)
        fits = [p for p in range(1, g + 1) if g % p == 0 and p > 1] or [1]
        raise ModelError(f"a {h}x{w} image does not tile into patch_size {patch_size} patches",
                         where="model.patch_size",
                         fix=f"pick a patch_size dividing {h} and {w} (one of {', '.join(map(str, fits))})")


def sincos_positions_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sin-cos position table [grid_h * grid_w, dim], rows in raster order: half the width encodes the
    row index, half the column index, each as 1-D sin-cos features (Vaswani et al. 2017; MAE's / DiT's table)."""
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def axis(pos: Tensor) -> Tensor:
        a = pos.double()[:, None] * omega[None]
        return torch.cat([torch.sin(a), torch.cos(a)], dim=1)

    rows, cols = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.cat([axis(rows.reshape(-1)), axis(cols.reshape(-1))], dim=1).float()


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Attention(nn.Module):
    """Multi-head self-attention over tokens [B, N, D] (torch's scaled_dot_product_attention)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        # [B, N, 3D] -> q, k, v [B, heads, N, D/heads], unit stride along the head dim (SDPA's fused kernels)
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """DiT block with adaLN-Zero: the embedding [B, D] gives shift, scale and gate of the attention and the MLP
    branch; each branch is LayerNorm (no affine) -> modulate -> attention | MLP -> gate -> residual."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        width = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, width), nn.GELU(approximate="tanh"), nn.Linear(width, dim))
        self.ada = nn.Linear(dim, 6 * dim)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).chunk(6, dim=1)
        x = x + gate1[:, None] * self.attn(_modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None] * self.mlp(_modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """LayerNorm -> adaLN (shift, scale) -> linear to the p * p * C pixel values of each token's patch."""

    def __init__(self, dim: int, patch: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(dim, 2 * dim)
        self.linear = nn.Linear(dim, patch * patch * channels)

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        shift, scale = self.ada(F.silu(c)).chunk(2, dim=1)
        return self.linear(_modulate(self.norm(x), shift, scale))


class DiT(ConditionEmbedder, nn.Module):
    """The velocity (or x1) network for one image field ``x`` [B, C, H, W], H and W multiples of ``patch_size``.

    Tokens are the (H/p) x (W/p) patches in raster order. With ``class_conditional`` and a dataset of K condition
    classes the label embedding has K + 1 rows: row K is the null class that the trainer's ``cond_dropout`` and
    classifier-free guidance use (``cond=None`` means null too).

    Args:
        patch_size: side p of the square patches.
        hidden: token width D.
        depth: transformer blocks.
        num_heads: attention heads (dividing ``hidden``).
        mlp_ratio: each block's MLP width as a multiple of ``hidden``.
        positions: ``"sincos"`` (a fixed table) or ``"learned"`` (a parameter started from that table).
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

    model_key = "dit"

    def __init__(self, patch_size: int = 2, hidden: int = 256, depth: int = 6, num_heads: int = 4,
                 mlp_ratio: float = 4.0, positions: Literal["sincos", "learned"] = "sincos",
                 class_conditional: bool = True, time_scale: float = 1000.0, two_times: bool = False,
                 guidance_input: bool = False,
                 data_info: DataInfo | None = None, predictions: dict[str, Literal["velocity", "x1"]] | None = None,
                 image_shape: tuple[int, int, int] | None = None, num_classes: int | None = None) -> None:
        super().__init__()
        if data_info is not None:
            if "x" not in data_info.fields or len(data_info.fields["x"].shape) != 3:
                raise ModelError(f"the dit needs one image field 'x' of shape [C, H, W]; the dataset has "
                                 f"{ {k: f.shape for k, f in data_info.fields.items()} }", where="model",
                                 fix="use an image dataset (mnist, fashion_mnist, cifar10, image_folder)")
            image_shape = tuple(int(s) for s in data_info.fields["x"].shape)  # type: ignore[assignment]
            num_classes = data_info.num_cond_classes
        if image_shape is None:
            raise ModelError("the dit needs the image shape", where="model", fix="pass data_info or image_shape")
        problem = _width_problem(hidden, num_heads)
        if problem:
            raise ModelError(problem[1], where=f"model.{problem[0]}", fix=problem[2])
        check_patch(image_shape, patch_size)
        self.channels, h, w = image_shape
        self.patch, self.grid = patch_size, (h // patch_size, w // patch_size)
        self.residual = (predictions or {}).get("x", "velocity") == "x1"  # x1-prediction: x_t + head
        self.init_embedding(hidden, TIME_FEATURES, num_classes if class_conditional else None, two_times, time_scale,
                            guidance_input)
        self.patch_embed = nn.Linear(self.channels * patch_size ** 2, hidden)
        table = sincos_positions_2d(hidden, *self.grid)[None]
        if positions == "learned":
            self.pos = nn.Parameter(table)
        else:
            self.register_buffer("pos", table, persistent=False)
        self.blocks = nn.ModuleList(Block(hidden, num_heads, mlp_ratio) for _ in range(depth))
        self.final = FinalLayer(hidden, patch_size, self.channels)
        self._init_weights()

    def _init_weights(self) -> None:
        """DiT's initialisation: xavier-uniform linears with zero biases, N(0, 0.02) time MLP and class table,
        then adaLN-Zero: every modulation and the output linear at zero."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.time_mlp:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        if self.label_emb is not None:
            nn.init.normal_(self.label_emb.weight, std=0.02)
        for layer in [*(b.ada for b in self.blocks), self.final.ada, self.final.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, x: Tensor) -> Tensor:
        """[B, C, H, W] -> tokens [B, N, p * p * C], N = (H/p)(W/p) in raster order."""
        b, c = x.shape[:2]
        (gh, gw), p = self.grid, self.patch
        return x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, p * p * c)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """Tokens [B, N, p * p * C] -> [B, C, H, W] (the inverse of :meth:`patchify`)."""
        b = tokens.shape[0]
        (gh, gw), p, c = self.grid, self.patch, self.channels
        return tokens.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, gh * p, gw * p)

    def net(self, x: Tensor, t: Tensor, cond: Tensor | None = None, r: Tensor | None = None,
            guidance: Tensor | None = None) -> Tensor:
        """The transformer on a bare image batch [B, C, H, W] -> [B, C, H, W]."""
        c = self.embed(t, cond, x.shape[0], r, guidance)
        h = self.patch_embed(self.patchify(x)) + self.pos.to(x.dtype)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final(h, c))

    def forward(self, x_t: dict[str, Tensor], t: Tensor, cond: Tensor | None = None, *,
                r: Tensor | None = None, guidance: Tensor | None = None) -> dict[str, Tensor]:
        x = x_t["x"]
        out = self.net(x, t, cond, r, guidance)
        return {"x": x + out if self.residual else out}


def build_dit(data_info: DataInfo, predictions: dict[str, str] | None = None, **options) -> DiT:
    """Registry factory: the DiT sized by the recipe, shaped by the dataset."""
    return DiT(data_info=data_info, predictions=predictions, **options)  # type: ignore[arg-type]
