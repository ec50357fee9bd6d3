"""Learning-rate schedules, stepped once per optimiser step (lengths given in epochs)."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LambdaLR


def cosine_warmup(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                  warmup_epochs: float = 5, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up to the base rate over ``warmup_epochs``, then cosine decay to
    ``min_lr_ratio`` of it at ``total_steps``."""
    warmup = int(round(warmup_epochs * steps_per_epoch))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def step_warmup(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                warmup_epochs: float = 5, milestones: tuple[float, ...] = (50,),
                gamma: float = 0.1) -> LambdaLR:
    """Linear warm-up over ``warmup_epochs``, then the base rate times ``gamma`` for every
    milestone epoch passed (CTR-GCN's schedule: 5 warm-up epochs, x0.1 at epoch 50 of 65)."""
    warmup = int(round(warmup_epochs * steps_per_epoch))
    bounds = sorted(int(round(m * steps_per_epoch)) for m in milestones)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return gamma ** sum(step >= b for b in bounds)

    return LambdaLR(optimizer, factor)


def sgdr(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
         cycle_epochs: float | None = None, cycle_mult: int = 2, cycles: int = 3,
         min_lr_ratio: float = 0.0) -> CosineAnnealingWarmRestarts:
    """Cosine with warm restarts; by default ``cycles`` cycles, each ``cycle_mult`` times longer,
    fill the run."""
    if cycle_epochs is None:
        first = total_steps / sum(cycle_mult ** i for i in range(cycles))
    else:
        first = cycle_epochs * steps_per_epoch
    base_lr = optimizer.param_groups[0]["lr"]
    return CosineAnnealingWarmRestarts(optimizer, T_0=max(1, int(round(first))), T_mult=cycle_mult,
                                       eta_min=base_lr * min_lr_ratio)


def constant(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int) -> LambdaLR:
    """The base rate at every step."""
    return LambdaLR(optimizer, lambda step: 1.0)
