"""Masks and view augmentation for MaskCLR pretraining (torch, on whole batches).

Masks are boolean ``(B, T, V)`` per person-folded sample (``B = N*M``: every person slot of a
clip draws its own mask); :func:`fold_mask` turns one into ``(N, T, V, M)``, the layout of a
clip ``(N, C, T, V, M)`` without its channel axis. ``True`` means hidden.

A mask is a union of disjoint *units*, chosen by ``strategies``:

- ``["region"]`` (graph-aware): a unit is one body region of the layout (``Layout.regions``:
  torso, arms, legs) over every frame, so a whole arm or leg disappears for the clip;
- ``["temporal"]``: a unit is a contiguous block of ``block_len`` frames over every joint (the
  block grid gets a random phase per call, so blocks start anywhere);
- ``["region", "temporal"]`` (both): a unit is one region over one frame block (a
  spatio-temporal tube): whole regions, hidden over contiguous frame spans;
- ``[]``: single joint-frame entries (plain random masking, a baseline).

Each sample draws its ratio (a fixed ``mask_ratio`` or uniform in a ``[lo, hi]`` range), takes
units in a random order until that share of its ``T*V`` entries is covered, and keeps the unit
that crosses the target with the probability that makes the expected count exact. So the ratio is
met exactly on average and, per sample, within one unit (a region is up to a quarter of the body,
hence "on average over a batch").

All randomness comes from torch's CPU generator (the global one, or ``generator``) and is moved to
the batch's device afterwards: the same seed gives the same masks on CPU and GPU, and the RNG
state the checkpoints carry (``PhaseModule.on_save_checkpoint``) covers it.
"""

from __future__ import annotations

from typing import Sequence

import torch

from last_lite.skeleton import REGION_NAMES, Layout

STRATEGIES = ("region", "temporal")


def region_units(layout: Layout) -> list[list[int]]:
    """Joint groups of the layout's body regions; joints in no region are units of their own."""
    groups = [sorted(int(j) for j in layout.regions.get(name, ())) for name in REGION_NAMES]
    groups = [g for g in groups if g]
    covered = {j for g in groups for j in g}
    groups += [[j] for j in range(layout.num_joints) if j not in covered]
    if len(groups) < 2:  # e.g. a custom layout without a region map: one "torso" of every joint
        raise ValueError(f"layout {layout.name!r} has no body-region map (one region holds every "
                         f"joint): graph-aware masking needs Layout.regions; give the custom layout "
                         f"`regions` or use strategies=[temporal]")
    return groups


def _ratio_range(mask_ratio: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(mask_ratio, (int, float)):
        lo = hi = float(mask_ratio)
    else:
        lo, hi = (float(r) for r in mask_ratio)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"mask_ratio must be a fraction or a [lo, hi] range in [0, 1], got {mask_ratio}")
    return lo, hi


def unit_map(num_frames: int, num_joints: int, strategies: Sequence[str], joint_groups=None,
             block_len: int = 8, offset: int = 0) -> torch.Tensor:
    """``(U, T, V)`` boolean map of the disjoint units ``strategies`` mask by (module docstring)."""
    strategies = set(strategies)
    unknown = strategies - set(STRATEGIES)
    if unknown:
        raise ValueError(f"unknown masking strategies {sorted(unknown)}; choose from {STRATEGIES}")
    t, v = num_frames, num_joints
    if "temporal" in strategies:
        if block_len < 1:
            raise ValueError(f"block_len must be >= 1, got {block_len}")
        starts = list(range(-(offset % block_len), t, block_len))
        blocks = [(max(s, 0), min(s + block_len, t)) for s in starts]
        blocks = [(a, b) for a, b in blocks if b > a]
    else:
        blocks = [(0, t)]
    if "region" in strategies:
        if joint_groups is None:
            raise ValueError("region masking needs the layout's joint groups")
        groups = [list(g) for g in joint_groups]
    elif strategies:
        groups = [list(range(v))]
    else:  # plain random entries
        return torch.eye(t * v, dtype=torch.bool).view(t * v, t, v)
    units = torch.zeros(len(blocks) * len(groups), t, v, dtype=torch.bool)
    k = 0
    for a, b in blocks:
        for g in groups:
            units[k, a:b, g] = True
            k += 1
    return units


def generate_masks(batch: int, num_frames: int, num_joints: int,
                   mask_ratio: float | Sequence[float] = (0.5, 0.75),
                   strategies: Sequence[str] = STRATEGIES, joint_groups=None, block_len: int = 8,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """``(batch, T, V)`` boolean masks (True = hidden); see the module docstring."""
    lo, hi = _ratio_range(mask_ratio)
    offset = int(torch.randint(0, max(block_len, 1), (1,), generator=generator))
    units = unit_map(num_frames, num_joints, strategies, joint_groups, block_len, offset)
    flat = units.flatten(1).float()                       # (U, T*V)
    sizes = flat.sum(dim=1)                               # (U,)
    total = num_frames * num_joints
    ratio = lo + (hi - lo) * torch.rand(batch, generator=generator)
    target = ratio * total                                # (B,) entries to hide
    order = torch.rand(batch, len(sizes), generator=generator).argsort(dim=1)
    size_perm = sizes[order]                              # (B, U) in the drawn order
    after = size_perm.cumsum(dim=1)
    before = after - size_perm
    keep_prob = ((target[:, None] - before) / size_perm).clamp(0.0, 1.0)
    take_perm = torch.rand(batch, len(sizes), generator=generator) < keep_prob
    take = torch.zeros_like(take_perm).scatter(1, order, take_perm)
    return (take.float() @ flat > 0).view(batch, num_frames, num_joints)


def fold_mask(mask: torch.Tensor, persons: int) -> torch.Tensor:
    """``(N*M, T, V)`` (sample-major, as the models fold persons) -> ``(N, T, V, M)``."""
    b, t, v = mask.shape
    return mask.view(b // persons, persons, t, v).permute(0, 2, 3, 1)


def apply_mask(x: torch.Tensor, mask: torch.Tensor, value: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Replace hidden entries of ``x`` (N, C, T, V, M) by ``value`` (a scalar or a (C,) token)."""
    if not torch.is_tensor(value):
        value = torch.tensor(float(value), dtype=x.dtype, device=x.device)
    elif value.dim() == 1:
        value = value.to(x.dtype).view(1, -1, 1, 1, 1)
    return torch.where(mask[:, None], value, x)


def present_persons(x: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` True where a person slot holds any non-zero coordinate (absent slots are zeros)."""
    return x.abs().amax(dim=(1, 2, 3)) > 0


# -- view augmentation ------------------------------------------------------------------------------

def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """(N, 3) angles about x, y, z -> (N, 3, 3) matrices ``Rz @ Ry @ Rx`` (as the numpy transforms)."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def stack(rows):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = stack([[one, zero, zero], [zero, c[:, 0], s[:, 0]], [zero, -s[:, 0], c[:, 0]]])
    ry = stack([[c[:, 1], zero, -s[:, 1]], [zero, one, zero], [s[:, 1], zero, c[:, 1]]])
    rz = stack([[c[:, 2], s[:, 2], zero], [-s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def augment_view(x: torch.Tensor, rotate: float = 0.3, scale: float = 0.1, noise_std: float = 0.01,
                 coord_dims: int = 3, generator: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One random view of a batch ``(N, C, T, V, M)``: returns ``(clean, noisy)``.

    ``clean``: each sample rotated (angles uniform in ``[-rotate, rotate]`` per axis; 2D data about
    the image normal only) and scaled per axis (``U(1 - scale, 1 + scale)``); ``noisy`` adds
    ``N(0, noise_std^2)`` to it. Channels past ``coord_dims`` (scores) and absent joints (all-zero
    coordinates) are left as they are.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):  # views in float32
        return _augment_view(x.float(), rotate, scale, noise_std, coord_dims, generator)


def _augment_view(x, rotate, scale, noise_std, coord_dims, generator):
    n, d = x.shape[0], coord_dims
    coords = x[:, :d]
    present = (coords != 0).any(dim=1, keepdim=True).to(x.dtype)        # (N, 1, T, V, M)
    angles = (torch.rand(n, 3, generator=generator) * 2 - 1) * rotate
    if d == 2:
        angles[:, :2] = 0
    matrix = _rotation(angles.double())[:, :d, :d].float()
    factors = 1 + (torch.rand(n, d, 1, generator=generator) * 2 - 1) * scale
    matrix = (factors * matrix).to(device=x.device, dtype=x.dtype)      # diag(f) @ R
    rotated = torch.einsum("nij,njtvm->nitvm", matrix, coords) * present
    clean = torch.cat([rotated, x[:, d:]], dim=1)
    if noise_std <= 0:
        return clean, clean
    noise = torch.randn(coords.shape, generator=generator).to(device=x.device, dtype=x.dtype)
    noisy = torch.cat([rotated + noise_std * noise * present, x[:, d:]], dim=1)
    return clean, noisy


def expected_ratio(mask_ratio: float | Sequence[float]) -> float:
    lo, hi = _ratio_range(mask_ratio)
    return 0.5 * (lo + hi)


__all__ = ["STRATEGIES", "region_units", "unit_map", "generate_masks", "fold_mask", "apply_mask",
           "present_persons", "augment_view", "expected_ratio"]
