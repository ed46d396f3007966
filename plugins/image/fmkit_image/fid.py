"""Real FID (Heusel et al. 2017) through torchmetrics' ``FrechetInceptionDistance``, with Inception weights
that the user already has on disk: nothing is downloaded (``pip install 'fmkit-image[fid]'``).

The weights are torch-fidelity's port of the original TF Inception (``weights-inception-2015-12-05-6726825d.pth``,
the file torchmetrics would fetch), looked for in this order: the metric's ``weights`` option,
``$FMKIT_INCEPTION_WEIGHTS``, and torch hub's cache (``$TORCH_HOME/hub/checkpoints/``, where an earlier
online torchmetrics/torch-fidelity run left it). Samples and reference images in [-1, 1] become uint8 RGB
(grey images repeated over 3 channels) and are resized to 299 px by torchmetrics, as FID is usually computed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from fmkit.plugin import DataError, DependencyError, RecipeError
from pydantic import BaseModel, ConfigDict, Field

from fmkit_image.data import ImageDataset

WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + WEIGHTS_FILE
ENV = "FMKIT_INCEPTION_WEIGHTS"


class FIDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: str | None = Field(None, description=f"Inception weights file (default: ${ENV}, then torch hub's cache "
                                f"{WEIGHTS_FILE})")
    feature: Literal[64, 192, 768, 2048] = Field(2048, description="Inception feature layer (2048: the usual FID)")
    batch_size: int = Field(100, ge=1, description="images per Inception call")
    device: str = Field("cpu", description="where Inception runs (cpu, cuda)")


def _hub_cache() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE


def find_weights(weights: str | None = None) -> Path:
    """The local Inception weights, or a :class:`DependencyError` saying what is missing, where it was looked
    for and how to get it."""
    if weights or os.environ.get(ENV):
        p = Path(weights or os.environ[ENV]).expanduser()
        if p.is_file():
            return p
        src = "the fid metric's weights option" if weights else f"${ENV}"
        raise DependencyError(f"the Inception weights for FID are not at {p} (named by {src})",
                              where=f"eval.metrics: fid ({src} = {p})",
                              fix=f"put {WEIGHTS_FILE} there (download it where you have internet: {WEIGHTS_URL}) "
                                  f"or point {src} at the file")
    hub = _hub_cache()
    if hub.is_file():
        return hub
    raise DependencyError("the fid metric needs Inception weights on disk and found none (it downloads nothing)",
                          where=f"eval.metrics: fid (looked at the weights option, ${ENV}, {hub})",
                          fix=f"download {WEIGHTS_URL} where you have internet, then set {ENV}=/path/to/{WEIGHTS_FILE} "
                              f"(or the metric's weights: option), or copy it to {hub}")


def _require_torchmetrics():
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
    except ImportError as exc:
        raise DependencyError(f"the fid metric needs torchmetrics ({exc})", where="eval.metrics: fid",
                              fix="pip install 'fmkit-image[fid]'  (torchmetrics[image], with torch-fidelity)") from exc
    if not _TORCH_FIDELITY_AVAILABLE:
        raise DependencyError("the fid metric needs torch-fidelity (torchmetrics' Inception)",
                              where="eval.metrics: fid",
                              fix="pip install 'fmkit-image[fid]'  (or pip install torch-fidelity)")
    return FrechetInceptionDistance


def to_uint8_rgb(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float [N, C, H, W] -> uint8 [N, 3, H, W] (the data's levels; one channel repeated)."""
    u8 = ImageDataset.quantise(x)
    return u8.expand(-1, 3, -1, -1) if u8.shape[1] == 1 else u8


class FIDMetric:
    """FID of the samples against the same number of held-out real images (``dataset.reference(n)``); the
    weights are checked when the metric is built (the recipe's build), before any training.

    Args:
        weights: the Inception weights file; None: ``$FMKIT_INCEPTION_WEIGHTS``, then torch hub's cache.
        feature: the Inception layer whose features are compared (64, 192, 768 or 2048: the usual FID).
        batch_size: images per Inception call (bounds its memory).
        device: where Inception runs.
        data_info: the recipe's data description (accepted from the build context, not used).
    """

    def __init__(self, weights: str | None = None, feature: int = 2048, batch_size: int = 100, device: str = "cpu",
                 data_info=None) -> None:
        if feature not in (64, 192, 768, 2048):
            raise RecipeError(f"fid feature {feature} is not an Inception layer", where="eval.metrics: fid.feature",
                              fix="use 64, 192, 768 or 2048")
        self._fid_cls = _require_torchmetrics()
        self.weights = find_weights(weights)
        self.feature, self.batch_size, self.device = feature, batch_size, torch.device(device)
        self._fid = None

    def _metric(self):
        if self._fid is None:
            self._fid = self._fid_cls(feature=self.feature, feature_extractor_weights_path=str(self.weights),
                                      normalize=False).to(self.device)
        self._fid.reset()
        return self._fid

    @torch.no_grad()
    def __call__(self, samples, dataset) -> dict[str, float]:
        if not hasattr(dataset, "reference"):
            raise DataError("fid needs one of the image plugin's datasets", where="eval.metrics",
                            fix="use mnist, fashion_mnist, cifar10 or image_folder")
        x = samples["x"].detach().cpu()
        ref = dataset.reference(len(x), seed=0)["x"]
        fid = self._metric()
        for imgs, real in ((ref, True), (x, False)):
            for i in range(0, len(imgs), self.batch_size):
                fid.update(to_uint8_rgb(imgs[i:i + self.batch_size]).to(self.device), real=real)
        return {"fid": float(fid.compute()), "fid_n": float(len(x))}
