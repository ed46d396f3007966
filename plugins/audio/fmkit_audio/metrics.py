"""Audio metrics in the project's own classifier's feature space (SC09 protocol, no downloaded weights).

``acc``: share of conditional samples the classifier labels as their condition (``acc_real_test``, the
classifier on real test clips, is the ceiling); ``fd``: Fréchet distance (Heusel et al. 2017) of the
classifier's penultimate features, samples vs training clips, with ``fd_real`` (test vs the same
training clips, same N) as its floor; ``is``: exp E KL(p(y|x) || p(y)) (Salimans et al. 2016), with
``is_real`` on test clips; ``mel_stat_dist``: L2 distance of the per-mel-bin mean and std over real
frames (normalised units), samples vs test, with ``mel_stat_dist_real`` train vs test.
"""

from __future__ import annotations

import torch
from fmkit.plugin import State, frechet_distance
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor


class AudioDigitsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classifier_epochs: int = Field(30, ge=1, description="training epochs of the metric's classifier (cached)")
    seed: int = Field(0, description="classifier seed and the training clips' draw")


def frechet(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` [N, D] and ``b`` [N, D] (the core's)."""
    return frechet_distance(a, b)


def inception_score(logits: Tensor) -> float:
    p = logits.double().softmax(1)
    py = p.mean(0, keepdim=True)
    return float((p * (p.clamp_min(1e-12).log() - py.clamp_min(1e-12).log())).sum(1).mean().exp())


def mel_stats(state: State) -> Tensor:
    m = state["mask"].to(state["mel"].dtype)
    n = m.sum(dim=(0, 2)).clamp_min(1.0)
    mean = (state["mel"] * m).sum(dim=(0, 2)) / n
    var = (((state["mel"] - mean[None, :, None]) ** 2) * m).sum(dim=(0, 2)) / n
    return torch.cat([mean, var.sqrt()])


class AudioDigitsMetric:
    """``metric(samples, dataset) -> {acc, acc_real_test, fd, fd_real, is, is_real, mel_stat_dist, ...}``."""

    tables = {"real data, same N (floors and ceilings)": ["acc_real_test", "fd_real", "is_real",
                                                          "mel_stat_dist_real", "n_fd"]}

    def __init__(self, classifier_epochs: int = 30, seed: int = 0) -> None:
        self.epochs, self.seed = classifier_epochs, seed
        self._clf = None

    def classifier(self, dataset):
        from fmkit_audio.classifier import train_classifier

        if self._clf is None:
            self._clf = train_classifier(dataset, epochs=self.epochs, seed=self.seed)
        return self._clf

    def __call__(self, samples: State, dataset) -> dict[str, float]:
        clf = self.classifier(dataset)
        s = {"mel": samples["mel"].float(), "mask": samples["mask"]}
        test = dataset.split_state("reference")
        train = dataset.split_state("train")
        s_logits, s_feat = clf.run(s)
        t_logits, t_feat = clf.run(test)
        n = min(s_feat.shape[0], t_feat.shape[0])
        g = torch.Generator().manual_seed(self.seed)
        tr_idx = torch.randperm(train["mel"].shape[0], generator=g)[:n]
        _, tr_feat = clf.run({"mel": train["mel"][tr_idx], "mask": train["mask"][tr_idx]})
        out = {
            "acc": float((s_logits.argmax(1) == samples["cond"]).float().mean()) if "cond" in samples else float("nan"),
            "acc_real_test": float((t_logits.argmax(1) == test["cond"]).float().mean()),
            "fd": frechet(s_feat[:n], tr_feat), "fd_real": frechet(t_feat[:n], tr_feat),
            "is": inception_score(s_logits), "is_real": inception_score(t_logits),
            "mel_stat_dist": float((mel_stats(s) - mel_stats(test)).norm()),
            "mel_stat_dist_real": float((mel_stats(train) - mel_stats(test)).norm()),
            "n_fd": float(n),
        }
        return out
