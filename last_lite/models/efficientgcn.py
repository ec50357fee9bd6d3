"""EfficientGCN-B0, the baseline of Song et al., "Constructing Stronger and Faster Baselines for
Skeleton-based Action Recognition" (TPAMI 2022), written from the paper's description.

Layout (facts of the published B0 configuration):

* Three input branches (joint, velocity, bone), each with ``2*C`` channels derived here from the
  raw coordinates without parameters (see :func:`jvb_branches`). Every branch is
  BN -> stem (graph layer to 64 channels, plain temporal layer) -> two blocks.
* The branches are concatenated at the fusion stage (after block 2) and a main stream of two more
  blocks follows; then global average pooling, the person mean, dropout and a linear classifier.
* A block is a spatial graph layer, ``depth`` temporal layers (the first one strided) and an
  ST-Joint attention layer. The block table is ``[width, stride, depth]`` =
  ``[[48,1,0.5],[24,1,0.5],[64,2,1],[128,2,1]]`` scaled by the compound rule with factor 0 for B0
  (width rounded to a multiple of 16, depth rounded; both with Python's ``round``, i.e. half to
  even), which gives ``[[48,1,0],[32,1,0],[64,2,1],[128,2,1]]``: the two branch blocks hold no
  temporal layer at all.
* Swish activations, temporal kernel 5, graph distance 2 (three hop subsets), biases on,
  learnable edge importance.
* Temporal layers: B0 (the released config ``2001``) uses the sandglass ("SG") layer with
  reduction 2, which the ST-Joint attention shares: 306,201 trainable parameters for NTU-60, the
  count of the official code (whose ``thop`` report, which skips edges, says 0.29M).
  ``efficientgcn_b0_epsep`` is the released EpSep variant (config ``2013``): the separable
  (inverted-bottleneck, expansion 2) layer with reduction 4, 345,333 parameters.

The graph operator is the distance partition: subset ``k`` holds the joint pairs ``k`` hops apart
(k = 0, 1, 2), every column divided by the number of joints within ``norm_hops`` hops of the
receiving joint. The reference normalises over a 10-hop neighbourhood before keeping the first three
subsets, so ``norm_hops`` defaults to 10. The aggregation is a broadcast matmul over the joint axis,
``(N, K, C*T, V) @ (K, V, V)`` summed over K, which exports to ONNX as MatMul + ReduceSum.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from last_lite.models.blocks import init_weights
from last_lite.models.graph import Layout, get_layout, hop_distance
from last_lite.models.registry import register_model

PERSON_MODES = ("fold", "primary")
B0_BLOCKS = ((48, 1, 0.5), (24, 1, 0.5), (64, 2, 1), (128, 2, 1))
BONE_EPS = 1e-4


def compound_scale(blocks: Sequence[Sequence[float]], factor: int,
                   scale: Sequence[float] = (1.2, 1.35)) -> list[tuple[int, int, int]]:
    """Scale ``[width, stride, depth]`` rows by ``scale[0]**factor`` (width) and ``scale[1]**factor``
    (depth). Width goes to the nearest multiple of 16 (at least 16), depth to the nearest integer,
    both with Python's round (half to even, so B0's depth 0.5 becomes 0 and width 24 becomes 32)."""
    width_mult, depth_mult = scale[0] ** factor, scale[1] ** factor
    out = []
    for width, stride, depth in blocks:
        out.append((max(16 * int(round(width * width_mult / 16)), 16), int(stride),
                    int(round(depth * depth_mult))))
    return out


def distance_adjacency(layout: Layout, max_distance: int = 2, norm_hops: int = 10) -> np.ndarray:
    """``(max_distance+1, V, V)`` float32; ``A[k, j, i]`` is the weight with which joint j feeds i.

    ``A[k, j, i] = [hops(j, i) == k] / |{u : hops(u, i) <= norm_hops}|`` (column normalisation).
    """
    if max_distance < 0 or norm_hops < max_distance:
        raise ValueError(f"need 0 <= max_distance <= norm_hops, got {max_distance}, {norm_hops}")
    hops = hop_distance(layout.num_joints, layout.edges)
    reach = (hops <= norm_hops).astype(np.float64)
    scale = 1.0 / reach.sum(axis=0)  # >= 1 joint (itself) always within reach
    subsets = [(hops == k).astype(np.float64) * scale[None, :] for k in range(max_distance + 1)]
    return np.stack(subsets).astype(np.float32)


def jvb_branches(x: torch.Tensor, parents: torch.Tensor, center: int) -> tuple[torch.Tensor, ...]:
    """The three ``2C``-channel inputs of ``x`` (N, C, T, V, M), without parameters.

    joint:    coordinates, coordinates minus the centre joint's;
    velocity: x[t+1] - x[t] and x[t+2] - x[t], zero on the last two frames;
    bone:     b = x - x[parent], and the angle of b to each axis, acos(b_c / (|b| + 1e-4)).
    """
    frames = x.shape[2]
    joint = torch.cat([x, x - x[:, :, :, center:center + 1]], dim=1)
    tail = torch.zeros_like(x[:, :, :2])
    step1 = torch.cat([x[:, :, 1:-1] - x[:, :, :-2], tail], dim=2)[:, :, :frames]
    step2 = torch.cat([x[:, :, 2:] - x[:, :, :-2], tail], dim=2)[:, :, :frames]
    velocity = torch.cat([step1, step2], dim=1)
    bone = x - x.index_select(3, parents)
    length = torch.sqrt((bone * bone).sum(dim=1, keepdim=True)) + BONE_EPS
    angle = torch.acos(bone / length)
    return joint, velocity, torch.cat([bone, angle], dim=1)


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
            bias: bool = True) -> nn.Sequential:
    """A ``(kernel, 1)`` convolution over time followed by batch norm."""
    return nn.Sequential(nn.Conv2d(cin, cout, (kernel, 1), (stride, 1), ((kernel - 1) // 2, 0),
                                   groups=groups, bias=bias), nn.BatchNorm2d(cout))


class GraphLayer(nn.Module):
    """Distance-partition graph convolution, BN, residual (1x1 conv + BN when widths differ), Swish."""

    def __init__(self, cin: int, cout: int, adjacency: torch.Tensor, bias: bool = True,
                 learnable_edge: bool = True):
        super().__init__()
        self.subsets = adjacency.shape[0]
        self.cout = cout
        self.project = nn.Conv2d(cin, cout * self.subsets, 1, bias=bias)
        self.register_buffer("adjacency", adjacency.clone())
        self.edge = nn.Parameter(torch.ones_like(adjacency)) if learnable_edge else None
        self.bn = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if cin == cout else conv_bn(cin, cout, bias=bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, v = x.shape
        a = self.adjacency if self.edge is None else self.adjacency * self.edge
        y = self.project(x).reshape(n, self.subsets, self.cout * t, v)
        y = torch.matmul(y, a).sum(dim=1).reshape(n, self.cout, t, v)
        return self.act(self.bn(y) + self.shortcut(x))


class PlainTemporalLayer(nn.Module):
    """Full temporal convolution (kernel k), BN, identity residual, Swish (the stem's layer)."""

    def __init__(self, channels: int, kernel: int = 5, bias: bool = True):
        super().__init__()
        self.body = conv_bn(channels, channels, kernel, bias=bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + x)


class SeparableTemporalLayer(nn.Module):
    """Inverted bottleneck over time: 1x1 expand (Swish), depthwise k x 1 (Swish), 1x1 project;
    plus the residual (identity, or a strided 1x1 conv + BN), with no activation after the sum."""

    def __init__(self, channels: int, kernel: int = 5, stride: int = 1, expand_ratio: int = 2,
                 bias: bool = True):
        super().__init__()
        inner = channels * expand_ratio if expand_ratio > 0 else channels
        self.expand = conv_bn(channels, inner, bias=bias) if expand_ratio > 0 else None
        self.depthwise = conv_bn(inner, inner, kernel, stride, groups=inner, bias=bias)
        self.pointwise = conv_bn(inner, channels, bias=bias)
        self.shortcut = nn.Identity() if stride == 1 else conv_bn(channels, channels, 1, stride, bias=bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.act(self.expand(x))
        y = self.pointwise(self.act(self.depthwise(y)))
        return y + self.shortcut(x)


class SandglassTemporalLayer(nn.Module):
    """Sandglass over time: depthwise k x 1 (Swish), 1x1 reduce to C/r, 1x1 back to C (Swish),
    depthwise k x 1 with the stride; plus the residual (identity, or a strided 1x1 conv + BN),
    with no activation after the sum."""

    def __init__(self, channels: int, kernel: int = 5, stride: int = 1, reduct_ratio: int = 2,
                 bias: bool = True):
        super().__init__()
        inner = channels // reduct_ratio
        self.depthwise_in = conv_bn(channels, channels, kernel, groups=channels, bias=bias)
        self.reduce = conv_bn(channels, inner, bias=bias)
        self.restore = conv_bn(inner, channels, bias=bias)
        self.depthwise_out = conv_bn(channels, channels, kernel, stride, groups=channels, bias=bias)
        self.shortcut = nn.Identity() if stride == 1 else conv_bn(channels, channels, 1, stride, bias=bias)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(self.act(self.depthwise_in(x)))
        y = self.depthwise_out(self.act(self.restore(y)))
        return y + self.shortcut(x)


TEMPORAL_LAYERS = ("sg", "sep")


class STJointAttention(nn.Module):
    """ST-Joint attention: frame and joint descriptors (means over joints / frames) share a
    1x1 conv + BN + hard-swish squeeze, then two 1x1 convs with sigmoids give a frame map and a
    joint map whose product rescales the input; out = Swish(BN(x * map) + x)."""

    def __init__(self, channels: int, reduct_ratio: int = 4, bias: bool = True):
        super().__init__()
        inner = channels // reduct_ratio
        self.squeeze = nn.Sequential(nn.Conv2d(channels, inner, 1, bias=bias), nn.BatchNorm2d(inner),
                                     nn.Hardswish())
        self.frame_gate = nn.Conv2d(inner, channels, 1)
        self.joint_gate = nn.Conv2d(inner, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[2]
        per_frame = x.mean(dim=3, keepdim=True)                    # (N, C, T, 1)
        per_joint = x.mean(dim=2, keepdim=True).transpose(2, 3)    # (N, C, V, 1)
        z = self.squeeze(torch.cat([per_frame, per_joint], dim=2))
        frame_map = torch.sigmoid(self.frame_gate(z[:, :, :t]))                   # (N, C, T, 1)
        joint_map = torch.sigmoid(self.joint_gate(z[:, :, t:].transpose(2, 3)))   # (N, C, 1, V)
        return self.act(self.bn(x * (frame_map * joint_map)) + x)


class GCNBlock(nn.Module):
    """Graph layer -> ``depth`` temporal layers (first one strided) -> ST-Joint attention."""

    def __init__(self, cin: int, cout: int, stride: int, depth: int, adjacency: torch.Tensor,
                 kernel: int, temporal_layer: str, expand_ratio: int, reduct_ratio: int, bias: bool,
                 learnable_edge: bool):
        super().__init__()
        self.graph = GraphLayer(cin, cout, adjacency, bias, learnable_edge)

        def temporal(layer_stride: int) -> nn.Module:
            if temporal_layer == "sg":
                return SandglassTemporalLayer(cout, kernel, layer_stride, reduct_ratio, bias)
            return SeparableTemporalLayer(cout, kernel, layer_stride, expand_ratio, bias)

        self.temporal = nn.Sequential(*[temporal(stride if i == 0 else 1) for i in range(depth)])
        self.attention = STJointAttention(cout, reduct_ratio, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.temporal(self.graph(x)))


class InputBranch(nn.Module):
    """BN on the raw branch input, the stem (graph layer + plain temporal layer), then blocks."""

    def __init__(self, cin: int, stem: int, blocks: Sequence[tuple[int, int, int]],
                 adjacency: torch.Tensor, kernel: int, temporal_layer: str, expand_ratio: int,
                 reduct_ratio: int, bias: bool, learnable_edge: bool):
        super().__init__()
        self.input_bn = nn.BatchNorm2d(cin)
        self.stem_graph = GraphLayer(cin, stem, adjacency, bias, learnable_edge)
        self.stem_temporal = PlainTemporalLayer(stem, kernel, bias)
        layers, width = [], stem
        for out, stride, depth in blocks:
            layers.append(GCNBlock(width, out, stride, depth, adjacency, kernel, temporal_layer,
                                   expand_ratio, reduct_ratio, bias, learnable_edge))
            width = out
        self.blocks = nn.Sequential(*layers)
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem_temporal(self.stem_graph(self.input_bn(x))))


class EfficientGCN(nn.Module):
    """EfficientGCN (B0 by default) on raw joints ``(N, C, T, V, M)``; ``forward`` returns logits.

    ``forward_features`` returns ``stages``: the fused branch output and each main-stream block's
    output, all ``(N*M', C_s, T_s, V)`` (M' = M with ``person_mode='fold'``, 1 with 'primary'),
    and ``pooled``: the ``(N, C)`` average over frames, joints and persons.
    """

    def __init__(self, num_classes: int = 60, layout="ntu25", in_channels: int = 3,
                 person_mode: str = "fold", dropout: float = 0.25, stem_channels: int = 64,
                 blocks: Sequence[Sequence[float]] = B0_BLOCKS, scale_factor: int = 0,
                 scale_args: Sequence[float] = (1.2, 1.35), fusion_stage: int = 2,
                 temporal_kernel: int = 5, max_graph_distance: int = 2, norm_hops: int = 10,
                 temporal_layer: str = "sg", expand_ratio: int = 0, reduct_ratio: int = 2,
                 bias: bool = True, learnable_edge: bool = True):
        super().__init__()
        if person_mode not in PERSON_MODES:
            raise ValueError(f"person_mode must be one of {PERSON_MODES}, got {person_mode!r}")
        if temporal_layer not in TEMPORAL_LAYERS:
            raise ValueError(f"temporal_layer must be one of {TEMPORAL_LAYERS}, got {temporal_layer!r}")
        rows = compound_scale(blocks, scale_factor, scale_args)
        if not 1 <= fusion_stage < len(rows):
            raise ValueError(f"fusion_stage must be in [1, {len(rows) - 1}], got {fusion_stage}")
        self.layout = get_layout(layout)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.person_mode = person_mode
        self.block_rows = tuple(rows)
        center = self.layout.norm_center if self.layout.norm_center is not None else self.layout.center
        self.center = int(center)
        self.register_buffer("parents", torch.from_numpy(self.layout.parents), persistent=False)
        adjacency = torch.from_numpy(distance_adjacency(self.layout, max_graph_distance,
                                                        max(norm_hops, max_graph_distance)))
        common = dict(adjacency=adjacency, kernel=temporal_kernel, temporal_layer=temporal_layer,
                      expand_ratio=expand_ratio, reduct_ratio=reduct_ratio, bias=bias, learnable_edge=learnable_edge)

        self.branches = nn.ModuleList([
            InputBranch(2 * in_channels, stem_channels, rows[:fusion_stage], **common)
            for _ in range(3)])
        width = 3 * self.branches[0].out_channels
        main = []
        for out, stride, depth in rows[fusion_stage:]:
            main.append(GCNBlock(width, out, stride, depth, **common))
            width = out
        self.main_stream = nn.ModuleList(main)
        self.num_features = width
        # timm-style stage taps (the fused input branches, then each main-stream block)
        reduction = int(np.prod([r[1] for r in rows[:fusion_stage]]))
        self.feature_info = [dict(num_chs=3 * self.branches[0].out_channels, reduction=reduction, module="branches")]
        for i, (out, stride, _) in enumerate(rows[fusion_stage:]):
            reduction *= int(stride)
            self.feature_info.append(dict(num_chs=out, reduction=reduction, module=f"main_stream.{i}"))
        self.stage_channels = tuple(f["num_chs"] for f in self.feature_info)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) convs with zero bias, unit/zero BN, normal(0, 0.001) classifier;
        edge importances start at one (set where they are made)."""
        init_weights(self, linear_std=0.001)

    def fold_persons(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], int]:
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[3] != self.layout.num_joints:
            raise ValueError(f"expected input (N, {self.in_channels}, T, {self.layout.num_joints}, M), "
                             f"got {tuple(x.shape)}")
        if self.person_mode == "primary":
            x = x[..., :1]
        n, _, t, v, m = x.shape
        streams = jvb_branches(x, self.parents, self.center)
        return tuple(s.permute(0, 4, 1, 2, 3).reshape(n * m, s.shape[1], t, v) for s in streams), m

    def forward_features(self, x: torch.Tensor) -> dict:
        streams, persons = self.fold_persons(x)
        h = torch.cat([branch(s) for branch, s in zip(self.branches, streams)], dim=1)
        stages = [h]
        for block in self.main_stream:
            h = block(h)
            stages.append(h)
        pooled = h.mean(dim=(2, 3))
        pooled = pooled.reshape(-1, persons, pooled.shape[1]).mean(dim=1)
        return {"stages": tuple(stages), "pooled": pooled}

    def forward_head(self, pooled: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        h = self.dropout(pooled)
        return h if pre_logits else self.classifier(h)

    def auxiliary_loss(self, pooled: torch.Tensor) -> None:
        """EfficientGCN trains with the classification loss only."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)["pooled"])


@register_model("efficientgcn_b0")
def efficientgcn_b0(num_classes=60, layout="ntu25", **overrides):
    return EfficientGCN(num_classes=num_classes, layout=layout, **overrides)


@register_model("efficientgcn_b0_epsep")
def efficientgcn_b0_epsep(num_classes=60, layout="ntu25", **overrides):
    return EfficientGCN(num_classes=num_classes, layout=layout, **{
        "temporal_layer": "sep", "expand_ratio": 2, "reduct_ratio": 4, **overrides})
