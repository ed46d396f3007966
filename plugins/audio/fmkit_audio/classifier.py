"""A small digit classifier on normalised log-mels that fmkit trains itself (no downloaded weights).

It plays the role of the SC09 protocol's pretrained classifier (DiffWave, Kong et al. 2021; SaShiMi,
Goel et al. 2022): label accuracy of conditional samples, and a feature space (its penultimate
layer) for Fréchet distance and the inception-style score. A 1-D conv net over frames with masked
mean+max pooling, so padding plays no part. Trained with a fixed seed on the training split,
cached by the dataset's key (front end, clips, trimming) and the training settings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from fmkit.plugin import DataError, ProgressBar, State, save_tensors
from torch import Tensor, nn

from fmkit_audio.mel import settings_key

VERSION = 1


class DigitClassifier(nn.Module):
    """``logits, features = net(mel [B,M,T], mask [B,1,T])``; features ``[B, feature_dim]``."""

    def __init__(self, n_mels: int, num_classes: int, width: int = 128, feature_dim: int = 128) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(n_mels, width, 5, padding=2), nn.Conv1d(width, width, 5, padding=2),
                                    nn.Conv1d(width, width, 3, padding=1), nn.Conv1d(width, width, 3, padding=1)])
        self.feat = nn.Linear(2 * width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.drop = nn.Dropout(0.2)

    def forward(self, mel: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        m = mask.to(mel.dtype)
        h = mel * m
        for i, conv in enumerate(self.convs):
            h2 = F.gelu(conv(h)) * m
            h = h2 if i == 0 else h + h2
        n = m.sum(-1).clamp_min(1.0)
        mean = h.sum(-1) / n
        mx = h.masked_fill(~mask.bool(), float("-inf")).amax(-1)
        f = F.gelu(self.feat(torch.cat([mean, mx], 1)))
        return self.head(self.drop(f)), f


@dataclass
class TrainedClassifier:
    net: DigitClassifier
    test_accuracy: float
    path: Path
    trained: bool = False  # True: trained by this call; False: loaded from the cache

    @torch.no_grad()
    def run(self, state: State, batch: int = 256) -> tuple[Tensor, Tensor]:
        """Logits ``[N, K]`` and features ``[N, D]`` of a padded mel state."""
        self.net.eval()
        outs = [self.net(state["mel"][i:i + batch].float(), state["mask"][i:i + batch])
                for i in range(0, state["mel"].shape[0], batch)]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _augment(mel: Tensor, mask: Tensor, g: torch.Generator) -> Tensor:
    """Gain (a constant in log-mel), a little noise, and a random shift of up to 3 frames in time."""
    b = mel.shape[0]
    gain = (torch.rand(b, 1, 1, generator=g) - 0.5) * 0.6
    noise = torch.randn(mel.shape, generator=g) * 0.1
    return (mel + gain + noise) * mask


def train_classifier(dataset, *, epochs: int = 30, batch_size: int = 64, lr: float = 2e-3, seed: int = 0,
                     cache: Path | None = None, force: bool = False, log=print,
                     progress: bool = False) -> TrainedClassifier:
    """Train (or load from the cache) the classifier for ``dataset`` (a :class:`~fmkit_audio.data.MelDataset`).

    The cache file is named by the dataset's key (clips, front end, trimming) and these settings;
    ``force`` retrains and overwrites it. Training is deterministic on the CPU for a given seed.

    Args:
        dataset: a labelled MelDataset: trains on its train split, measures on its reference split.
        epochs: passes over the training split.
        batch_size: clips per optimizer step (the whole split when it is smaller).
        lr: the peak learning rate of the one-cycle schedule.
        seed: fixes the initial weights, the batch order and the augmentation.
        cache: the folder of the cached weights; None: the plugin's cache folder.
        force: retrain even when cached weights exist, and overwrite them.
        log: called with a progress line every 10 epochs.
        progress: show a progress bar of the steps (a heartbeat line every few minutes where the output is no
            terminal).

    Returns:
        The classifier with its accuracy on the reference split (a share in [0, 1]) and its cache path;
        ``trained`` says whether this call trained it.
    """
    from safetensors.torch import load_file

    from fmkit_audio.data import cache_dir

    k = dataset.info.num_cond_classes
    if not k:
        raise DataError("the digit classifier needs class labels, and this dataset has none", where="data",
                        fix="use a labelled dataset (fsdd, speechcommands, audio_folder with labels)")
    n_mels = dataset.opts.mel.n_mels
    key = settings_key("classifier", VERSION, dataset.key, epochs, batch_size, lr, seed)
    path = (cache or cache_dir()) / f"classifier-{key}.safetensors"
    net = DigitClassifier(n_mels, k)
    train, test = dataset.split_state("train"), dataset.split_state("reference")
    if path.is_file() and not force:
        net.load_state_dict(load_file(str(path)))
        clf = TrainedClassifier(net, float("nan"), path)
        clf.test_accuracy = accuracy(clf, test)
        return clf
    torch.manual_seed(seed)
    net = DigitClassifier(n_mels, k)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
    n = train["mel"].shape[0]
    if n < batch_size:
        batch_size = max(1, n)  # tiny data (tests, pilots): one batch of everything
    steps = epochs * (n // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    t0 = time.monotonic()
    step = 0
    with ProgressBar.optional(steps, progress, "classifier") as bar:
        for ep in range(epochs):
            net.train()
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - batch_size + 1, batch_size):
                idx = perm[i:i + batch_size]
                mel, mask, y = train["mel"][idx], train["mask"][idx], train["cond"][idx]
                logits, _ = net(_augment(mel, mask, g), mask)
                loss = F.cross_entropy(logits, y, label_smoothing=0.05)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(step, loss.item())
            if (ep + 1) % 10 == 0 or ep + 1 == epochs:
                clf = TrainedClassifier(net, 0.0, path)
                log(f"classifier epoch {ep + 1}/{epochs}: loss {loss.item():.3f}, test accuracy "
                    f"{accuracy(clf, test):.4f} ({time.monotonic() - t0:.0f} s)")
    clf = TrainedClassifier(net, 0.0, path, trained=True)
    clf.test_accuracy = accuracy(clf, test)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_tensors({k_: v.contiguous() for k_, v in net.state_dict().items()}, tmp)  # as the umask allows
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps({"test_accuracy": clf.test_accuracy, "epochs": epochs,
                                                         "seed": seed, "dataset": dataset.name,
                                                         "train_seconds": time.monotonic() - t0}, indent=1))
    except OSError:
        pass
    return clf


def accuracy(clf: TrainedClassifier, state: State) -> float:
    logits, _ = clf.run(state)
    return float((logits.argmax(1) == state["cond"]).float().mean())
