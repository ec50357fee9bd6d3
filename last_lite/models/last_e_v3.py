"""The LAST network and its LAST-E v3 variants (nano, small, base, large)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from last_lite.models.blocks import (Block, GatedPoolHead, InformationBottleneck, StreamFusion,
                                     compute_streams, init_weights)
from last_lite.models.graph import get_layout, graph_adjacency
from last_lite.models.registry import register_model

STAGE_STRIDES = (1, 2, 2)
PERSON_MODES = ("fold", "primary")


class LASTNet(nn.Module):
    """Three-stream stem, three GCN+TCN stages and a gated-pooling head.

    Input ``(N, C, T, V, M)``; ``forward`` returns logits. ``forward_features`` returns the three
    stage outputs ``(N*M', C_s, T_s, V)`` (M' = M with ``person_mode='fold'``, 1 with 'primary')
    and the pooled feature ``(N, C)`` after the person mean.
    """

    def __init__(self, num_classes: int = 60, layout="ntu25", in_channels: int = 3,
                 stem: int = 48, channels: Sequence[int] = (64, 96, 128),
                 blocks: Sequence[int] = (2, 2, 2), max_hop: int = 2,
                 gate: str | Sequence[str | None] | None = "motion", joint_att: bool = True,
                 subset_att: bool = True, learnable_edge: bool = True, ib: bool = False,
                 dropout: float = 0.3, drop_path: float = 0.0, person_mode: str = "fold",
                 tcn_kernel: int = 5):
        super().__init__()
        if person_mode not in PERSON_MODES:
            raise ValueError(f"person_mode must be one of {PERSON_MODES}, got {person_mode!r}")
        if len(channels) != 3 or len(blocks) != 3 or min(blocks) < 1:
            raise ValueError(f"need three stages with >= 1 block each, got channels={channels} blocks={blocks}")
        self.layout = get_layout(layout)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.person_mode = person_mode
        self.stage_channels = tuple(channels)
        gates = list(gate) if isinstance(gate, (list, tuple)) else [gate] * 3
        adjacency = torch.from_numpy(graph_adjacency(self.layout, max_hop))
        self.register_buffer("parents", torch.from_numpy(self.layout.parents), persistent=False)

        self.stem = StreamFusion(in_channels, stem)
        rates = np.linspace(0.0, drop_path, sum(blocks)).tolist()
        stages, width, index = [], stem, 0
        for s, (out, depth) in enumerate(zip(channels, blocks)):
            layers = []
            for b in range(depth):
                layers.append(Block(width, out, adjacency, stride=STAGE_STRIDES[s] if b == 0 else 1,
                                    gate=gates[s], joint_att=joint_att, learnable_edge=learnable_edge,
                                    subset_att=subset_att, drop_path=rates[index], tcn_kernel=tcn_kernel))
                width, index = out, index + 1
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.pool = GatedPoolHead(width)
        self.ib = InformationBottleneck(width) if ib else None
        self.norm = nn.BatchNorm1d(width)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)
        self.num_features = width
        # timm-style stage taps: channels, temporal reduction and module name of each stage output
        self.feature_info = [dict(num_chs=c, reduction=int(np.prod(STAGE_STRIDES[:i + 1])), module=f"stages.{i}")
                             for i, c in enumerate(channels)]
        init_weights(self)

    def fold_persons(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[3] != self.layout.num_joints:
            raise ValueError(f"expected input (N, {self.in_channels}, T, {self.layout.num_joints}, M), "
                             f"got {tuple(x.shape)}")
        if self.person_mode == "primary":
            x = x[..., :1]
        n, c, t, v, m = x.shape
        streams = compute_streams(x, self.parents)
        # Channels-last (N*M, C, T, V) is several times faster for the depthwise temporal
        # convolutions and BatchNorm on CPU; the blocks are written to accept either layout.
        return tuple(s.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v)
                     .contiguous(memory_format=torch.channels_last) for s in streams), m

    def forward_features(self, x: torch.Tensor) -> dict:
        streams, persons = self.fold_persons(x)
        h = self.stem(streams)
        stage_outputs = []
        for stage in self.stages:
            h = stage(h)
            stage_outputs.append(h)
        pooled = self.pool(h)
        pooled = pooled.view(-1, persons, pooled.shape[1]).mean(dim=1)
        return {"stages": tuple(stage_outputs), "pooled": pooled}

    def forward_head(self, pooled: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        h = self.dropout(self.norm(pooled))
        return h if pre_logits else self.classifier(h)

    def auxiliary_loss(self, pooled: torch.Tensor) -> torch.Tensor | None:
        """The IB term while training (None in eval mode or without IB)."""
        if self.ib is None or not self.training:
            return None
        return self.ib(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)["pooled"])


# One line per variant (models.md's table); keyword overrides win over these defaults.
LAST_E_V3_VARIANTS = {
    "last_e_v3_nano": dict(stem=24, channels=(32, 48, 64), blocks=(1, 1, 1), max_hop=1,
                           gate="motion", subset_att=False, ib=False, dropout=0.2, drop_path=0.0),
    "last_e_v3_small": dict(stem=32, channels=(48, 64, 96), blocks=(1, 2, 2), max_hop=2,
                            gate="motion", subset_att=True, ib=False, dropout=0.25, drop_path=0.0),
    "last_e_v3_base": dict(stem=48, channels=(64, 96, 128), blocks=(2, 2, 2), max_hop=2,
                           gate="motion", subset_att=True, ib=True, dropout=0.3, drop_path=0.05),
    "last_e_v3_large": dict(stem=48, channels=(80, 112, 160), blocks=(2, 2, 2), max_hop=2,
                            gate=("motion", "motion", "hybrid"), subset_att=True, ib=True,
                            dropout=0.3, drop_path=0.1),
}


def _register(name: str, defaults: dict) -> None:
    @register_model(name)
    def factory(num_classes: int = 60, layout="ntu25", **overrides) -> LASTNet:
        return LASTNet(num_classes=num_classes, layout=layout, **{**defaults, **overrides})

    factory.__name__ = name


for _name, _defaults in LAST_E_V3_VARIANTS.items():
    _register(_name, dict(joint_att=True, learnable_edge=True, **_defaults))
