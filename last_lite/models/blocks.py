"""Building blocks of the LAST family (see docs/models.md).

Graph products are plain matmuls over the joint axis (no einsum) so they export to ONNX,
TensorRT and TFLite without special cases.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def compute_streams(x: torch.Tensor, parents: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Joint, velocity and bone streams of ``x`` (N, C, T, V, M); parameter-free."""
    velocity = F.pad(x[:, :, 1:] - x[:, :, :-1], (0, 0, 0, 0, 0, 1))
    bone = x - x.index_select(3, parents)
    return x, velocity, bone


def spatial_mean(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``x.mean(dims, keepdim=True)`` of an (N, C, T, V) map, over T (2) and/or V (3).

    While training it reduces the (N, T, V, C) view, a free view of the channels-last maps, so the
    backward's full-size gradient is channels-last like every other gradient of the map; the
    plain mean's is contiguous, and the autograd sum of the two layouts ran 2.4x slower than a
    same-layout sum (under bf16; docs/results.md, round four). Without grad (evaluation, export)
    it is the plain mean, so exported graphs keep one ReduceMean."""
    if not x.requires_grad:
        return x.mean(dim=dims, keepdim=True)
    return x.permute(0, 2, 3, 1).mean(dim=[d - 1 for d in dims], keepdim=True).permute(0, 3, 1, 2)


class StreamFusion(nn.Module):
    """BatchNorm per stream, concatenation, then Conv1x1 -> BN -> ReLU to the stem width."""

    def __init__(self, in_channels: int, out_channels: int, num_streams: int = 3):
        super().__init__()
        self.stream_norms = nn.ModuleList(nn.BatchNorm2d(in_channels) for _ in range(num_streams))
        self.conv = nn.Conv2d(in_channels * num_streams, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, streams: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = torch.cat([norm(s) for norm, s in zip(self.stream_norms, streams)], dim=1)
        return F.relu(self.bn(self.conv(x)))


class SpatialGCN(nn.Module):
    """Conv1x1 to K*Cout, per-subset aggregation over joints, sum (or subset attention), BN.

    ``adjacency`` is (K, V, V) with ``A[k, j, i]``: joint j feeds joint i, so the aggregation is
    ``y_k = x_k @ A_k`` on the joint axis.
    """

    def __init__(self, in_channels: int, out_channels: int, adjacency: torch.Tensor,
                 learnable_edge: bool = False, subset_att: bool = False):
        super().__init__()
        self.num_subsets = adjacency.shape[0]
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, self.num_subsets * out_channels, 1, bias=False)
        self.register_buffer("adjacency", adjacency.clone())
        self.edge_weight = nn.Parameter(torch.ones_like(adjacency)) if learnable_edge else None
        self.subset_att = (nn.Linear(self.num_subsets * out_channels, self.num_subsets, bias=False)
                           if subset_att else None)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, v = x.shape
        k, c = self.num_subsets, self.out_channels
        adjacency = self.adjacency if self.edge_weight is None else self.adjacency * self.edge_weight
        # (N, T, V*K, C) is a free view of the conv output when it is channels-last (the fast CPU
        # layout), and aggregating over joints and summing over subsets is then one matmul with
        # mixing[i, (j, k)] = A[k, j, i].
        y = self.conv(x).permute(0, 2, 3, 1).reshape(n, t, v * k, c)
        mixing = adjacency.permute(2, 1, 0).reshape(v, v * k)
        if self.subset_att is not None:
            # Per-sample subset weights scale the small mixing matrix, not the K-times-wider maps.
            weights = self.subset_weights(x, adjacency)
            mixing = (mixing.view(v, v, k) * weights.view(n, 1, 1, k)).view(n, 1, v, v * k)
        y = torch.matmul(mixing, y)  # (N, T, V, C)
        return self.bn(y.view(n, t, v, c).permute(0, 3, 1, 2))

    def subset_weights(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        """(N, K) softmax weights from each aggregated map's global mean, computed on the input:
        the 1x1 conv is linear and bias-free, so
        ``mean_{t,i} sum_j A[k,j,i] (W_k x)[t,j] = W_k sum_j (sum_i A[k,j,i]) mean_t x[t,j] / V``."""
        n, c_in, _, v = x.shape
        k, c = self.num_subsets, self.out_channels
        out_degree = adjacency.sum(dim=2)  # (K, V)
        joint_means = spatial_mean(x, (2,)).squeeze(2)  # (N, C_in, V)
        inputs = torch.matmul(joint_means.unsqueeze(1), out_degree[None, :, :, None]) / v  # (N, K, C_in, 1)
        pooled = torch.matmul(self.conv.weight.view(1, k, c, c_in), inputs)  # (N, K, C, 1)
        return torch.softmax(self.subset_att(pooled.flatten(1)), dim=1)


class EpSepTCN(nn.Module):
    """Expand (1x1) -> depthwise temporal (k x 1, stride) -> project (1x1), with a residual."""

    def __init__(self, channels: int, kernel_size: int = 5, stride: int = 1, expand: int = 2):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False),
                                    nn.BatchNorm2d(hidden), nn.Hardswish())
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, (kernel_size, 1), stride=(stride, 1),
                      padding=(kernel_size // 2, 0), groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.Hardswish())
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False),
                                     nn.BatchNorm2d(channels))
        self.residual = (nn.Identity() if stride == 1 else nn.Sequential(
            nn.Conv2d(channels, channels, 1, stride=(stride, 1), bias=False),
            nn.BatchNorm2d(channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x)
        conv, norm, act = self.depthwise
        if conv.stride[0] > 1 and h.requires_grad and h.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # oneDNN's bf16 backward of a strided depthwise conv ran 10-14x slower than its float32
            # one (docs/results.md, round four): this one conv trains in float32 (its bf16 forward,
            # e.g. a frozen teacher's, is fast and stays).
            with torch.autocast("cpu", enabled=False):
                h = conv(h.float())
        else:
            h = conv(h)
        return self.project(act(norm(h))) + self.residual(x)


def _squeeze_channels(channels: int) -> int:
    return max(4, channels // 4)


class MotionGate(nn.Module):
    """Channel gate driven by motion energy; ``x + alpha*(x*g - x)`` with alpha starting at 0."""

    descriptor_factor = 1

    def __init__(self, channels: int):
        super().__init__()
        hidden = _squeeze_channels(channels)
        self.fc = nn.Sequential(nn.Linear(channels * self.descriptor_factor, hidden, bias=False),
                                nn.ReLU(), nn.Linear(hidden, channels, bias=False), nn.Sigmoid())
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1, 1))

    @staticmethod
    def motion_energy(x: torch.Tensor) -> torch.Tensor:
        """Mean absolute frame difference per (sample, channel): (N, C)."""
        if not x.requires_grad:
            return (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=(2, 3))
        # on the (N, T, V, C) view while training, for channels-last gradients (see spatial_mean)
        frames = x.permute(0, 2, 3, 1)
        return (frames[:, 1:] - frames[:, :-1]).abs().mean(dim=(1, 2))

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        return self.motion_energy(x)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, C, 1, 1) factor ``1 + alpha*(g - 1)``: ``x + alpha*(x*g - x)`` is ``x * scale``."""
        gate = self.fc(self.descriptor(x))[:, :, None, None]
        return 1 + self.alpha * (gate - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale(x)


class HybridGate(MotionGate):
    """MotionGate whose descriptor adds three temporal band powers (low, mid, high)."""

    descriptor_factor = 4

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        power = torch.fft.rfft(x.float(), dim=2).abs().square().mean(dim=3)  # (N, C, F)
        bins = power.shape[2]
        f3 = max(bins // 3, 1)
        bands = [power[:, :, :f3].mean(2), power[:, :, f3:2 * f3].mean(2), power[:, :, 2 * f3:].mean(2)]
        # A band can be empty for very short clips; its power is then zero, not NaN.
        bands = [torch.nan_to_num(b, nan=0.0) for b in bands]
        return torch.cat([self.motion_energy(x)] + [b.to(x.dtype) for b in bands], dim=1)


class STJointAtt(nn.Module):
    """Factorised temporal x spatial attention; ``x + alpha*(x*a_t*a_s - x)``, alpha starts at 0."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = _squeeze_channels(channels)

        def branch() -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                                 nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False), nn.Sigmoid())

        self.temporal = branch()
        self.spatial = branch()
        self.alpha = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def factor(self, x: torch.Tensor, scale: torch.Tensor | None = None,
               post: torch.Tensor | None = None) -> torch.Tensor:
        """The full-size factor with ``att(x * scale) * post = x * factor`` for per-(N, C) factors
        (a gate's ``scale``, drop-path's ``post``), from small tensors alone:
        ``lerp(z, z*a_t*a_s, alpha)`` is ``z * (1 - alpha + alpha*a_t*a_s)``, and the means of
        ``x * scale`` are ``scale`` times those of ``x``."""
        means_t, means_s = spatial_mean(x, (3,)), spatial_mean(x, (2,))
        if scale is not None:
            means_t, means_s = means_t * scale, means_s * scale
        att_t, att_s = self.temporal(means_t), self.spatial(means_s)
        inner, outer = 1 - self.alpha, att_t * self.alpha
        for f in (scale, post):
            if f is not None:
                inner, outer = inner * f, outer * f
        return torch.addcmul(inner, outer, att_s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor(x)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def factor(self, x: torch.Tensor) -> torch.Tensor | None:
        """The per-sample factor (0 or 1/keep), or None when nothing is dropped."""
        if self.rate == 0.0 or not self.training:
            return None
        keep = 1.0 - self.rate
        return x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep) / keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = self.factor(x)
        return x if factor is None else x * factor


class Block(nn.Module):
    """``residual(x) + DropPath(att(gate(TCN(hardswish(GCN(x))))))``, no activation after the sum."""

    def __init__(self, in_channels: int, out_channels: int, adjacency: torch.Tensor, stride: int = 1,
                 gate: str | None = None, joint_att: bool = False, learnable_edge: bool = False,
                 subset_att: bool = False, drop_path: float = 0.0, tcn_kernel: int = 5):
        super().__init__()
        self.gcn = SpatialGCN(in_channels, out_channels, adjacency, learnable_edge, subset_att)
        self.tcn = EpSepTCN(out_channels, tcn_kernel, stride)
        gates = {None: nn.Identity, "none": nn.Identity, "motion": MotionGate, "hybrid": HybridGate}
        if gate not in gates:
            raise ValueError(f"unknown gate {gate!r}; expected one of none, motion, hybrid")
        self.gate = gates[gate](out_channels) if gates[gate] is not nn.Identity else nn.Identity()
        self.att = STJointAtt(out_channels) if joint_att else nn.Identity()
        self.drop_path = DropPath(drop_path)
        self.residual = (nn.Identity() if in_channels == out_channels and stride == 1 else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=(stride, 1), bias=False),
            nn.BatchNorm2d(out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.tcn(F.hardswish(self.gcn(x)))
        # drop_path(att(gate(y))) as y times one factor: the gate and drop-path act per (sample,
        # channel), so they merge into the attention's factor and no intermediate map is written.
        scale = self.gate.scale(y) if isinstance(self.gate, MotionGate) else None
        drop = self.drop_path.factor(y)
        if isinstance(self.att, STJointAtt):
            y = y * self.att.factor(y, scale, drop)
        else:
            for f in (scale, drop):
                if f is not None:
                    y = y * f
        return self.residual(x) + y


class GatedPoolHead(nn.Module):
    """``g*GAP + (1-g)*GMP`` over (T, V) with ``g = sigmoid(p)``, p starting at 0 (an even mix)."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate)
        pooled = g * spatial_mean(x, (2, 3)) + (1 - g) * x.amax(dim=(2, 3), keepdim=True)
        return pooled.flatten(1)


class InformationBottleneck(nn.Module):
    """Gaussian IB: KL(N(mu, sigma) || N(0, 1)) of the pooled feature, a training-only loss."""

    def __init__(self, channels: int):
        super().__init__()
        latent = min(128, channels)
        self.mu = nn.Linear(channels, latent)
        self.logvar = nn.Linear(channels, latent)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.mu(pooled), self.logvar(pooled)
        return (-0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)).mean()


def init_weights(module: nn.Module, linear_std: float = 0.01) -> None:
    """Kaiming-normal (fan_out) convs, unit/zero BN, normal(0, linear_std) linears, zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
