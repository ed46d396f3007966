"""A small CNN classifier that fmkit trains itself on the real training set, to judge samples
without downloaded weights: accuracy of class-conditional samples and a Fréchet distance in its
penultimate feature space (the FID recipe of Heusel et al. 2017 with this network in place of Inception).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from fmkit.plugin import DataError, ProgressBar, save_tensors
from fmkit.plugin import frechet_distance as _frechet
from torch import Tensor, nn


class SmallCNN(nn.Module):
    """conv32-conv64-pool-conv128-pool-fc128 (the features) -> fc K; inputs in [-1, 1]."""

    def __init__(self, in_channels: int, num_classes: int, feat: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(128 * 16, feat), nn.ReLU())
        self.head = nn.Linear(feat, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def weights_path(dataset_name: str, in_channels: int, num_classes: int) -> Path:
    from fmkit_image.data import cache_dir

    return cache_dir() / "classifiers" / f"{dataset_name}-c{in_channels}-k{num_classes}-seed0.safetensors"


def train_classifier(images: Tensor, labels: Tensor, num_classes: int, *, epochs: int = 2, batch_size: int = 128,
                     lr: float = 2e-3, seed: int = 0, device: str | torch.device = "cpu",
                     progress: bool = False) -> SmallCNN:
    """Train on uint8-derived images in [-1, 1] [N, C, H, W]; seed fixed so the weights are reproducible
    (the same initial weights and batch order on any ``device``; the network comes back on the CPU).

    Args:
        images: the training images in [-1, 1] [N, C, H, W].
        labels: their classes in [0, num_classes) [N] (int64).
        num_classes: number of classes K.
        epochs: passes over the data.
        batch_size: images per optimizer step (a last partial batch is skipped).
        lr: the peak learning rate of the one-cycle schedule.
        seed: fixes the initial weights and the batch order.
        device: where to train.
        progress: show a progress bar (a heartbeat line every few minutes where the output is no terminal).

    Returns:
        The trained :class:`SmallCNN`, in eval mode on the CPU.
    """
    torch.manual_seed(seed)
    dev = torch.device(device)
    net = SmallCNN(images.shape[1], num_classes).to(dev)
    images, labels = images.to(dev), labels.to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    n = len(images)
    steps = epochs * (n // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    g = torch.Generator().manual_seed(seed)
    net.train()
    step = 0
    with ProgressBar.optional(steps, progress, "classifier") as bar:
        for _ in range(epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n - batch_size + 1, batch_size):
                idx = perm[i:i + batch_size].to(dev)
                loss = F.cross_entropy(net(images[idx]), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(step, loss.item() if step % 10 == 0 or step == steps else None)  # .item() syncs a GPU
    return net.cpu().eval()


def save_classifier(net: SmallCNN, path: Path) -> None:
    """The weights at ``path`` (written whole, then renamed), as readable as the umask allows: a shared cache
    is read by the group (safetensors alone writes 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    save_tensors({k: v.contiguous() for k, v in net.state_dict().items()}, tmp)  # readable as the umask allows
    tmp.replace(path)


def missing_weights(path: Path, dataset_name: str = "mnist") -> DataError:
    """The error for classifier weights not at ``path``, with the command that trains them."""
    return DataError(f"no classifier weights at {path}", where="eval.metrics (image_classifier)",
                     fix=f"train them once: `fmkit image train-classifier --dataset {dataset_name}` (seed fixed, "
                         "cached), or drop image_classifier from eval.metrics")


def load_classifier(path: Path, in_channels: int, num_classes: int) -> SmallCNN:
    from safetensors.torch import load_file

    if not path.is_file():
        raise missing_weights(path)
    net = SmallCNN(in_channels, num_classes)
    net.load_state_dict(load_file(str(path)))
    return net.eval()


@torch.no_grad()
def predict(net: SmallCNN, x: Tensor, batch: int = 1000) -> tuple[Tensor, Tensor]:
    """Logits [N, K] and features [N, F] in chunks."""
    logits, feats = [], []
    for i in range(0, len(x), batch):
        f = net.features(x[i:i + batch].float().clamp(-1, 1))
        feats.append(f)
        logits.append(net.head(f))
    return torch.cat(logits), torch.cat(feats)


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of two feature sets [N, F] (the core's)."""
    return _frechet(a, b)
