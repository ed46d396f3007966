"""Audio metrics in the project's own classifier's feature space (SC09 protocol, no downloaded weights),
scored on what a user hears: the samples through the recipe's vocoder, at the WAV writer's level, analysed
again into log-mels (:mod:`fmkit_audio.roundtrip`); the mel before the vocoder is a second row.

``digit_acc_vocoded`` / ``digit_acc_mel``: share of conditional samples the classifier labels as their
condition, after the vocoder / on the mel; their ceilings are the real test clips' accuracy after the same
mel -> vocoder -> mel round trip (``digit_acc_ceiling``, cached) / on their mels (``digit_acc_ceiling_mel``).
``fd_vocoded`` / ``fd_mel``: Fréchet distance (Heusel et al. 2017) of the classifier's penultimate features,
samples vs training clips, with ``fd_floor`` / ``fd_floor_mel`` (test clips, round trip / mel, vs the same
training clips at the same N) as floors; ``is_vocoded`` / ``is_mel``: exp E KL(p(y|x) || p(y)) (Salimans et
al. 2016), with ``is_real_vocoded`` / ``is_real_mel`` on test clips; ``mel_stat_dist``: L2 distance of the
per-mel-bin mean and std over real frames (normalised units), samples vs test, with ``mel_stat_dist_real``
train vs test. ``vocoder: null`` leaves the vocoded rows out.
"""

from __future__ import annotations

from typing import Annotated

import torch
from fmkit.plugin import ComponentOf, ComponentSpec, Registry, State, frechet_distance
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor


class AudioDigitsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classifier_epochs: int = Field(30, ge=1, description="training epochs of the metric's classifier (cached)")
    seed: int = Field(0, description="classifier seed and the training clips' draw")
    vocoder: Annotated[ComponentSpec | None, ComponentOf("vocoders")] = Field(
        "griffin_lim", description="the vocoder the samples are heard through (give the wav writer's); null: "
        "score the mels only")


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
    """``metric(samples, dataset) -> {digit_acc_vocoded, digit_acc_mel, fd_vocoded, ..., digit_acc_ceiling, ...}``,
    the vocoded rows first (the module's docstring names them all).

    Args:
        classifier_epochs, seed: the classifier's training (cached by them and the data).
        vocoder: the vocoder the samples are heard through, a name or ``{name, ...options}``; None: mels only.
        registry: the registry that builds the vocoder (fmkit hands the run's); None: the process-wide one.
        classifier: a trained classifier to use instead of the cached one (tests, the train-classifier command).
    """

    tables = {"real data, same N (ceilings and floors)": [
        "digit_acc_ceiling", "digit_acc_ceiling_mel", "fd_floor", "fd_floor_mel", "is_real_vocoded", "is_real_mel",
        "mel_stat_dist_real", "n_fd"]}

    def __init__(self, classifier_epochs: int = 30, seed: int = 0, vocoder: ComponentSpec | None = "griffin_lim", *,
                 registry: Registry | None = None, classifier=None) -> None:
        self.epochs, self.seed = classifier_epochs, seed
        self.vocoder_spec, self.registry = vocoder, registry
        self._clf = classifier  # a TrainedClassifier to use; None: trained (or read from the cache) when first needed
        self._vocoder = None

    def classifier(self, dataset):
        from fmkit_audio.classifier import train_classifier

        if self._clf is None:
            self._clf = train_classifier(dataset, epochs=self.epochs, seed=self.seed)
        return self._clf

    def vocoder(self, dataset):
        """The vocoder of ``vocoder`` (None for none), built once for the dataset's front end."""
        from fmkit_audio.mel import FrontEndOptions
        from fmkit_audio.vocoders import build_vocoder

        if self._vocoder is None and self.vocoder_spec is not None:
            self._vocoder = build_vocoder(self.vocoder_spec, FrontEndOptions(**dataset.info.meta["front_end"]),
                                          where="eval.metrics.audio_digits.vocoder", registry=self.registry)
        return self._vocoder

    def vocoded_ceiling(self, dataset) -> float | None:
        """``digit_acc_ceiling`` alone: the real test clips' accuracy after the round trip (None without a vocoder)."""
        from fmkit_audio.roundtrip import ceiling_outputs

        vocoder = self.vocoder(dataset)
        if vocoder is None:
            return None
        logits, _ = ceiling_outputs(self.classifier(dataset), dataset, vocoder, self.vocoder_spec)
        return float((logits.argmax(1) == dataset.split_state("reference")["cond"]).float().mean())

    def __call__(self, samples: State, dataset) -> dict[str, float]:
        from fmkit_audio.roundtrip import ceiling_outputs, heard

        clf = self.classifier(dataset)
        s = {"mel": samples["mel"].float(), "mask": samples["mask"]}
        test, train = dataset.split_state("reference"), dataset.split_state("train")
        n = min(s["mel"].shape[0], test["mel"].shape[0])
        g = torch.Generator().manual_seed(self.seed)
        tr_idx = torch.randperm(train["mel"].shape[0], generator=g)[:n]
        _, tr_feat = clf.run({"mel": train["mel"][tr_idx], "mask": train["mask"][tr_idx]})
        rows = {"mel": _rows(clf.run(s), clf.run(test), samples.get("cond"), test["cond"], tr_feat, n)}
        vocoder = self.vocoder(dataset)
        if vocoder is not None:  # first: the table leads with what a user hears
            ceiling = ceiling_outputs(clf, dataset, vocoder, self.vocoder_spec)
            rows = {"vocoded": _rows(clf.run(heard(s, dataset, vocoder)), ceiling, samples.get("cond"), test["cond"],
                                     tr_feat, n), **rows}
        out = {f"{k}_{kind}": r[k] for k in ("digit_acc", "fd", "is") for kind, r in rows.items()}
        out["mel_stat_dist"] = float((mel_stats(s) - mel_stats(test)).norm())
        for kind, r in rows.items():  # the ceiling and floor of the headline (vocoded) rows carry no suffix
            tail = "" if kind == "vocoded" else f"_{kind}"
            out |= {f"digit_acc_ceiling{tail}": r["ceiling"], f"fd_floor{tail}": r["floor"],
                    f"is_real_{kind}": r["is_real"]}
        out["mel_stat_dist_real"] = float((mel_stats(train) - mel_stats(test)).norm())
        out["n_fd"] = float(n)
        return out


def _rows(sample_out: tuple[Tensor, Tensor], real_out: tuple[Tensor, Tensor], cond: Tensor | None, real_cond: Tensor,
          train_feat: Tensor, n: int) -> dict[str, float]:
    """Accuracy, Fréchet distance and inception score of the samples' classifier outputs ``(logits, features)``,
    and the same of the real test clips' (``ceiling``, ``floor``, ``is_real``), features vs ``train_feat`` [n, D]."""
    (s_logits, s_feat), (t_logits, t_feat) = sample_out, real_out
    acc = float((s_logits.argmax(1) == cond).float().mean()) if cond is not None else float("nan")
    return {"digit_acc": acc, "fd": frechet(s_feat[:n], train_feat), "is": inception_score(s_logits),
            "ceiling": float((t_logits.argmax(1) == real_cond).float().mean()),
            "floor": frechet(t_feat[:n], train_feat), "is_real": inception_score(t_logits)}
