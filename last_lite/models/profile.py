"""Parameters and FLOPs per sample (a multiply-add counts as 2 FLOPs, torch.utils.flop_counter)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Profile:
    params: int
    flops: int  # per sample, forward pass

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def profile_model(model: nn.Module, frames: int = 64, persons: int = 2, batch: int = 1) -> Profile:
    """Forward FLOPs per sample of ``model`` in eval mode on a ``(batch, C, T, V, M)`` zero clip."""
    channels = getattr(model, "in_channels", 3)
    joints = model.layout.num_joints
    x = torch.zeros(batch, channels, frames, joints, persons)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return Profile(params=count_parameters(model), flops=counter.get_total_flops() // batch)
