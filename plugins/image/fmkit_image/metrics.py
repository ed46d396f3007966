"""Sample-quality metrics for images with the plugin's own classifier (no downloaded weights)."""

from __future__ import annotations

import torch
from fmkit.plugin import DataError
from pydantic import BaseModel, ConfigDict, Field


class ClassifierMetricOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weights: str | None = Field(None, description="classifier weights (default: the cache of `fmkit image train-classifier`)")
    floor: bool = Field(True, description="also the real test-vs-train Fréchet distance at the same N (the floor)")


class ClassifierMetric:
    """accuracy of class-conditional samples (label = its cond), classifier-Fréchet distance to test
    images at the same N, and the real test-vs-train distance at that N beside it."""

    def __init__(self, weights: str | None = None, floor: bool = True, data_info=None) -> None:
        self.weights, self.floor = weights, floor
        self._net = None

    def _weights(self, dataset):
        from pathlib import Path

        from fmkit_image.classifier import weights_path

        c = dataset.info.fields["x"].shape[0]
        k = dataset.info.num_cond_classes
        return (Path(self.weights) if self.weights else weights_path(dataset.name, c, k)), c, k

    def check(self, dataset) -> None:
        """Before training (the engine's metric check): the judge's weights exist, else the :class:`DataError`
        the first evaluation would raise after the whole training."""
        from fmkit_image.classifier import missing_weights

        if not hasattr(dataset, "split"):
            return  # __call__ says what is wrong with the dataset
        path, _, _ = self._weights(dataset)
        if not path.is_file():
            raise missing_weights(path, dataset.name)

    def _classifier(self, dataset):
        from fmkit_image.classifier import load_classifier

        if self._net is None:
            self._net = load_classifier(*self._weights(dataset))
        return self._net

    def __call__(self, samples, dataset) -> dict[str, float]:
        from fmkit_image.classifier import frechet_distance, predict

        if not hasattr(dataset, "split"):
            raise DataError("image_classifier needs one of the image plugin's datasets", where="eval.metrics",
                            fix="use mnist, fashion_mnist, cifar10 or image_folder")
        net = self._classifier(dataset)
        x = samples["x"].detach().float().cpu()
        n = len(x)
        logits, feats = predict(net, x)
        out: dict[str, float] = {}
        if "cond" in samples:
            cond = samples["cond"].cpu()
            out["class_acc"] = float((logits.argmax(1) == cond).float().mean())
        ref = dataset.reference(n, seed=0)
        _, fref = predict(net, ref["x"])
        out["cfd"] = frechet_distance(feats, fref)
        if self.floor:
            imgs, _ = dataset.split("train")
            g = torch.Generator().manual_seed(1)
            idx = torch.randperm(len(imgs), generator=g)[:len(ref["x"])]
            _, ftr = predict(net, dataset.scale(imgs[idx]))
            out["cfd_floor"] = frechet_distance(ftr, fref)
        out["n"] = float(n)
        return out
