"""How well samples reproduce the data's frequencies, read off their spectra."""

import torch
from fmkit.plugin import Dataset, State


def dominant_frequency(x: torch.Tensor) -> torch.Tensor:
    """The FFT bin (cycles per window, 1..T/2) of largest magnitude of each series ``[B, 1, T]``."""
    spec = torch.fft.rfft(x.flatten(1).double(), dim=1).abs()
    spec[:, 0] = 0  # the mean is no frequency
    return spec.argmax(1)


class FrequencyMetric:
    """``freq_acc``: the share of conditional samples whose dominant frequency is the one asked for
    (label + 1), with ``freq_acc_data`` the same on real series; ``freq_w1``: the 1-Wasserstein
    distance between the dominant-frequency distributions of samples and data."""

    def __call__(self, samples: State, dataset: Dataset) -> dict[str, float]:
        ref = dataset.reference(len(samples["x"]))
        fs, fd = dominant_frequency(samples["x"]), dominant_frequency(ref["x"])
        out = {"freq_w1": float((fs.sort().values - fd.sort().values).abs().double().mean())}
        if "cond" in samples and "cond" in ref:
            out["freq_acc"] = float((fs == samples["cond"].long() + 1).double().mean())
            out["freq_acc_data"] = float((fd == ref["cond"].long() + 1).double().mean())
        return out
