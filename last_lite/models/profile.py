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


def model_table(names: list[str] | None = None, num_classes: int = 60, layout: str = "ntu25",
                frames: int = 64, persons: int = 2) -> str:
    """A markdown table of parameters and forward FLOPs per sample for the registered models."""
    from last_lite.models.registry import create_model, list_models

    rows = ["| model | params | GFLOPs / sample |", "|---|---:|---:|"]
    for name in names or list_models():
        profile = profile_model(create_model(name, num_classes=num_classes, layout=layout), frames, persons)
        rows.append(f"| {name} | {profile.params:,} | {profile.gflops:.3f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Parameters and FLOPs per sample of every model.")
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--persons", type=int, default=2)
    parser.add_argument("--layout", default="ntu25")
    parser.add_argument("--num-classes", type=int, default=60)
    args = parser.parse_args()
    print(f"{args.num_classes} classes, layout {args.layout}, T={args.frames}, M={args.persons}; "
          "a multiply-add counts as 2 FLOPs (torch.utils.flop_counter).\n")
    print(model_table(num_classes=args.num_classes, layout=args.layout, frames=args.frames,
                      persons=args.persons))
