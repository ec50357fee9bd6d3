"""Linear probe: how linearly separable a frozen encoder's pooled features are.

The encoder runs once, in eval mode and without gradients, over the train split (test-time clip,
no augmentation) and the test split; a linear classifier on standardised cached features is then
trained with full-batch (or mini-batch) Adam. Feature extraction dominates the cost.
"""

from __future__ import annotations

import logging
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from last_lite.models.registry import average_clips

log = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(model: nn.Module, loader: DataLoader, device: torch.device | str = "cpu"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features ``(N, C)`` (float32, CPU) and labels ``(N,)`` of every batch of ``loader``.

    A 6-D batch (N, k, C, T, V, M) holds k test clips per sample: their features are averaged.
    """
    was_training = model.training
    model.eval().to(device)
    feats, labels = [], []
    started = time.time()
    for batch in loader:
        x, y = batch[0], batch[1]
        x = x.to(device, non_blocking=True)
        f = average_clips(lambda clips: model.forward_features(clips)["pooled"], x)
        feats.append(f.float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    if not feats:
        raise ValueError("no batches to extract features from")
    out = torch.cat(feats), torch.cat(labels).long()
    log.info("features of %d samples (dim %d) in %.1f s", len(out[0]), out[0].shape[1], time.time() - started)
    return out


class LinearProbe(nn.Module):
    """Standardise with the training features' mean and std, then one linear layer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())
        self.linear = nn.Linear(mean.numel(), num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.std)


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     epochs: int = 200, lr: float = 0.01, weight_decay: float = 1e-4,
                     batch_size: int | None = None, seed: int = 0) -> LinearProbe:
    """Train :class:`LinearProbe` on cached features; ``batch_size=None`` means full batch."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    generator = torch.Generator().manual_seed(seed)
    features, labels = features.float(), labels.long()
    mean, std = features.mean(dim=0), features.std(dim=0, unbiased=False).clamp(min=1e-6)
    probe = LinearProbe(mean, std, num_classes)
    with torch.no_grad():  # seeded initialisation, independent of the global RNG
        bound = 1.0 / features.shape[1] ** 0.5
        probe.linear.weight.uniform_(-bound, bound, generator=generator)
        probe.linear.bias.zero_()
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(features)
    size = n if not batch_size else min(int(batch_size), n)
    for _ in range(int(epochs)):
        order = torch.randperm(n, generator=generator) if size < n else torch.arange(n)
        for start in range(0, n, size):
            idx = order[start:start + size]
            loss = F.cross_entropy(probe(features[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return probe.eval()


@torch.no_grad()
def probe_accuracy(probe: LinearProbe, features: torch.Tensor, labels: torch.Tensor,
                   num_classes: int) -> dict:
    """Top-1, top-5 (or top-num_classes) and per-class accuracy (fractions; a class without
    samples gets None, as in metrics.json)."""
    logits = probe(features.float())
    k = min(5, num_classes)
    top = logits.topk(k, dim=1).indices
    hit1 = top[:, 0] == labels
    hit5 = (top == labels[:, None]).any(dim=1)
    per_class = []
    for c in range(num_classes):
        members = labels == c
        per_class.append(float(hit1[members].float().mean()) if members.any() else None)
    return {"top1": float(hit1.float().mean()), "top5": float(hit5.float().mean()),
            "per_class_accuracy": per_class}
