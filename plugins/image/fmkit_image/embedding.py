"""The conditioning embedding shared by the image backbones (``unet``, ``dit``): time t, the optional second
time r (objective meanflow) and the class label with a null row for classifier-free guidance, summed into one
vector [B, emb_dim] that the blocks are modulated by."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from fmkit.plugin import GuidanceEmbedding, IntervalEmbedding, ModelError, embed_guidance
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [B, dim] of (scaled) times [B] (Vaswani et al. 2017)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ConditionEmbedder:
    """Mixin for an ``nn.Module`` backbone: :meth:`init_embedding` makes ``time_mlp``, ``interval`` (with two
    times) and ``label_emb`` (K + 1 rows, row K the null class) as attributes of the model itself, so their
    checkpoint keys stay those of the model (the U-Net's from before this mixin existed); :meth:`embed` sums
    them. ``model_key`` is the registry name the errors print."""

    model_key = "model"

    def init_embedding(self, emb_dim: int, features: int, num_classes: int | None, two_times: bool,
                       time_scale: float, guidance_input: bool = False) -> None:
        """Build the embedding layers.

        Args:
            emb_dim: width of the embedding [B, emb_dim].
            features: sinusoidal features of t (and of r - t) before the MLPs.
            num_classes: K condition classes (an embedding of K + 1 rows); None: unconditional.
            two_times: also embed h = r - t (zero at h = 0: :class:`fmkit.plugin.IntervalEmbedding`).
            time_scale: factor on t in [0, 1] before the sinusoids.
            guidance_input: also embed the guidance scale omega (zero at omega = 1:
                :class:`fmkit.plugin.GuidanceEmbedding`; objective meanflow's ``guidance_range``).
        """
        self.time_scale = float(time_scale)
        self.time_features = features
        self.time_mlp = nn.Sequential(nn.Linear(features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.interval = IntervalEmbedding(emb_dim, features=features) if two_times else None
        self.guidance_input = bool(guidance_input)
        self.guidance = GuidanceEmbedding(emb_dim, features=features) if guidance_input else None
        self.num_classes = num_classes
        self.label_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None

    def embed(self, t: Tensor, cond: Tensor | None, batch: int, r: Tensor | None = None,
              guidance: Tensor | None = None) -> Tensor:
        """Time (+ interval r - t) (+ guidance omega) (+ class) embedding [B, emb_dim]; ``cond=None`` takes the
        null class."""
        t = t.reshape(-1).expand(batch) if t.numel() == 1 else t
        emb = self.time_mlp(timestep_embedding(t * self.time_scale, self.time_features))
        if r is not None:
            if self.interval is None:
                raise ModelError(f"this {self.model_key} was built for one time (flow matching), and was called "
                                 "with a second time r (the average velocity of objective meanflow)",
                                 where="model.two_times", fix="set `two_times: true` in the recipe's model section")
            emb = emb + self.interval(r.reshape(-1).expand(batch) - t)
        g = embed_guidance(self.guidance, guidance, self.model_key)
        if g is not None:
            emb = emb + g.to(emb.dtype)
        if self.label_emb is not None:
            if cond is None:
                cond = torch.full((batch,), self.num_classes, dtype=torch.long, device=emb.device)
            emb = emb + self.label_emb(cond.reshape(batch).long())
        return emb.to(self.time_mlp[0].weight.dtype) if not torch.is_autocast_enabled() else emb
