"""Skeleton normalisation and the deterministic test-time clip (numpy only).

The edge runtime imports this module, so it must never import torch. Arrays are (M, T, V, C):
persons, frames, joints, channels; an all-zero joint means "absent" and stays zero.

- :func:`pre_normalize_3d` is PYSKL's ``PreNormalize3D`` (from 2s-AGCN's NTU preprocessing), with
  the joints taken from the layout instead of hard-coded indices.
- :func:`normalize_2d` centres 2D keypoints on the layout's centre joint and divides by a body size.
- :func:`normalize_clip` is THE test-time path: validation/test in training and the edge runtime
  both call it, so they see identical inputs.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from last_lite.skeleton import Layout, get_layout

__all__ = [
    "pre_normalize_3d", "normalize_2d", "normalize_clip", "rotation_matrix", "angle_between",
    "valid_length", "trim_frames", "crop_resize", "resize_frames", "uniform_indices", "pad_persons",
    "joint_mask", "linspace_indices", "minmax_normalize", "TEMPORAL_MODES", "SPATIAL_NORMS",
]

TEMPORAL_MODES = ("resize", "uniform", "sample")
SPATIAL_NORMS = (None, "none", "minmax")


# --------------------------------------------------------------------------------------------
# PYSKL PreNormalize3D
# --------------------------------------------------------------------------------------------
def _unit_vector(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def angle_between(v1: np.ndarray, v2: np.ndarray) -> float:
    """Angle in radians between two vectors (0 when either is ~zero), as in PYSKL."""
    v1 = np.asarray(v1, dtype=np.float64)
    v2 = np.asarray(v2, dtype=np.float64)
    if np.abs(v1).sum() < 1e-6 or np.abs(v2).sum() < 1e-6:
        return 0.0
    return float(np.arccos(np.clip(np.dot(_unit_vector(v1), _unit_vector(v2)), -1.0, 1.0)))


def rotation_matrix(axis: np.ndarray, theta: float) -> np.ndarray:
    """PYSKL's rotation matrix for ``theta`` radians about ``axis``; applied as ``x @ R.T``."""
    axis = np.asarray(axis, dtype=np.float64)
    if np.abs(axis).sum() < 1e-6 or np.abs(theta) < 1e-6:
        return np.eye(3)
    axis = axis / np.sqrt(np.dot(axis, axis))
    a = np.cos(theta / 2.0)
    b, c, d = -axis * np.sin(theta / 2.0)
    aa, bb, cc, dd = a * a, b * b, c * c, d * d
    bc, ad, ac, ab, bd, cd = b * c, a * d, a * c, a * b, b * d, c * d
    return np.array([[aa + bb - cc - dd, 2 * (bc + ad), 2 * (bd - ac)],
                     [2 * (bc - ad), aa + cc - bb - dd, 2 * (cd + ab)],
                     [2 * (bd + ac), 2 * (cd - ab), aa + dd - bb - cc]])


def _present_frames(person: np.ndarray) -> np.ndarray:
    """Indices of frames where a person's (T, V, C) data is not all (close to) zero."""
    t = person.shape[0]
    # np.isclose(x, 0) with its default tolerances is |x| <= 1e-8
    return np.flatnonzero((np.abs(person.reshape(t, -1)) > 1e-8).any(axis=1))


def _rotate_onto(xyz: np.ndarray, vec: np.ndarray, target) -> np.ndarray:
    """Rotate every point so that ``vec`` points along ``target`` (PYSKL's construction)."""
    return xyz @ rotation_matrix(np.cross(vec, target), angle_between(vec, target)).T


def pre_normalize_3d(keypoints: np.ndarray, layout: "str | Layout | Mapping",
                     align_center: bool = True, align_spine: bool = True) -> np.ndarray:
    """PYSKL ``PreNormalize3D`` on one sample (M, T, V, C) -> (M, T', V, C) float32.

    1. keep the frames where the main body (person 0) is present; if person 1 is present in more
       frames, keep its frames instead and swap persons 0 and 1;
    2. centre everything on ``layout.norm_center`` of person 0 in the first kept frame, keeping
       absent (all-zero) joints zero;
    3. rotate so the spine ``norm_zaxis`` (bottom -> top) of person 0, frame 0, points along +z,
       then the shoulder vector ``norm_xaxis`` (right - left shoulder) along +x.

    Only the first three channels are centred and rotated and tell a joint's presence; extra
    channels (e.g. a score) are only masked.
    A layout without ``norm_zaxis`` / ``norm_xaxis`` skips the corresponding rotation.
    """
    lay = get_layout(layout)
    x = np.asarray(keypoints, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"keypoints must be (M, T, V, C), got shape {x.shape}")
    m, t, v, c = x.shape
    if v != lay.num_joints:
        raise ValueError(f"layout {lay.name!r} has {lay.num_joints} joints, keypoints have {v}")
    if x.sum() == 0 or t == 0:
        return x.astype(np.float32)

    coords = min(c, 3)  # a score channel is not a coordinate: never centred, never "presence"
    index0 = _present_frames(x[0, ..., :coords])
    if m >= 2:
        index1 = _present_frames(x[1, ..., :coords])
        if len(index0) < len(index1):
            x = x[:, index1]
            order = [1, 0] + list(range(2, m))
            x = x[order]
        else:
            x = x[:, index0]
    else:
        x = x[:, index0]
    if x.shape[1] == 0:
        # no frame holds a person: all NaN (or all zero but for noise). Returned unchanged: the
        # store records a non-finite sample by name and data.on_bad_values drops it or stops
        return np.asarray(keypoints, dtype=np.float32)

    if align_center:
        center_joint = lay.norm_center if lay.norm_center is not None else lay.center
        main_body_center = x[0, 0, center_joint, :coords].copy()
        mask = (x[..., :coords] != 0).any(-1, keepdims=True)
        x = np.concatenate([x[..., :coords] - main_body_center, x[..., coords:]], axis=-1) * mask

    if align_spine and c >= 3:
        xyz = x[..., :3]
        if lay.norm_zaxis is not None:  # spine (bottom -> top) to +z
            bottom, top = lay.norm_zaxis
            xyz = _rotate_onto(xyz, xyz[0, 0, top] - xyz[0, 0, bottom], [0, 0, 1])
        if lay.norm_xaxis is not None:  # shoulders (left -> right) to +x
            right, left = lay.norm_xaxis
            xyz = _rotate_onto(xyz, xyz[0, 0, right] - xyz[0, 0, left], [1, 0, 0])
        x = np.concatenate([xyz, x[..., 3:]], axis=-1) if c > 3 else xyz
    return x.astype(np.float32)


# --------------------------------------------------------------------------------------------
# 2D keypoints
# --------------------------------------------------------------------------------------------
def joint_mask(keypoints: np.ndarray, coord_dims: int | None = None) -> np.ndarray:
    """(M, T, V) bool: joints whose coordinates are not all zero."""
    c = keypoints.shape[-1] if coord_dims is None else coord_dims
    return (keypoints[..., :c] != 0).any(-1)


def normalize_2d(keypoints: np.ndarray, layout: "str | Layout | Mapping",
                 coord_dims: int = 2, eps: float = 1e-6) -> np.ndarray:
    """Centre 2D keypoints on the layout's centre joint and divide by a body size.

    The centre is the mean position of person 0's ``norm_center`` joint over the frames where it
    is present (falling back to the mean of all present joints); the body size is the median over
    frames of person 0's bounding-box extent (the larger of width and height). Channels past
    ``coord_dims`` (a confidence score) are kept as they are; absent joints stay zero.
    """
    lay = get_layout(layout)
    x = np.asarray(keypoints, dtype=np.float64)
    if x.ndim != 4:
        raise ValueError(f"keypoints must be (M, T, V, C), got shape {x.shape}")
    if x.shape[2] != lay.num_joints:
        raise ValueError(f"layout {lay.name!r} has {lay.num_joints} joints, keypoints have {x.shape[2]}")
    xy = x[..., :coord_dims]
    present = joint_mask(x, coord_dims)
    if not present.any():
        return x.astype(np.float32)
    ref = 0 if present[0].any() else int(np.flatnonzero(present.any(axis=(1, 2)))[0])
    cj = lay.norm_center if lay.norm_center is not None else lay.center
    cpres = present[ref, :, cj]
    if cpres.any():
        center = xy[ref, cpres, cj].mean(axis=0)
    else:
        center = xy[ref][present[ref]].mean(axis=0)
    sizes = []
    for f in np.flatnonzero(present[ref].any(axis=1)):
        pts = xy[ref, f][present[ref, f]]
        sizes.append(float((pts.max(axis=0) - pts.min(axis=0)).max()))
    size = float(np.median(sizes)) if sizes else 1.0
    if size < eps:
        size = 1.0
    out = x.copy()
    out[..., :coord_dims] = (xy - center) / size * present[..., None]
    return out.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Temporal helpers (shared with transforms.py)
# --------------------------------------------------------------------------------------------
def valid_length(keypoints: np.ndarray) -> int:
    """Frames up to the last one holding any non-zero value (trailing padding excluded)."""
    t = keypoints.shape[1]
    nonzero = (keypoints.reshape(keypoints.shape[0], t, -1) != 0).any(axis=(0, 2))
    idx = np.flatnonzero(nonzero)
    return int(idx[-1] + 1) if idx.size else 0


def trim_frames(keypoints: np.ndarray) -> np.ndarray:
    """Drop trailing all-zero frames (keeps at least one frame)."""
    return keypoints[:, :max(valid_length(keypoints), 1)]


def resize_frames(keypoints: np.ndarray, size: int) -> np.ndarray:
    """Linear resampling along T to ``size`` frames, exactly as CTR-GCN's
    ``F.interpolate(mode="bilinear", align_corners=False)`` (a person absent throughout stays zero)."""
    m, t, v, c = keypoints.shape
    if t == size:
        return keypoints.astype(np.float32, copy=True)
    scale = t / size
    src = (np.arange(size, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.clip(src, 0, None)
    lo = np.minimum(np.floor(src).astype(np.int64), t - 1)
    hi = np.minimum(lo + 1, t - 1)
    w = (src - lo)[None, :, None, None]
    out = keypoints[:, lo] * (1 - w) + keypoints[:, hi] * w
    return out.astype(np.float32)


def crop_resize(keypoints: np.ndarray, clip_len: int, start: int, length: int) -> np.ndarray:
    """Frames ``start:start+length`` linearly resized to ``clip_len``."""
    length = max(int(length), 1)
    return resize_frames(keypoints[:, start:start + length], clip_len)


def center_crop_bounds(valid: int, ratio: float, num_clips: int = 1,
                       clip_index: int = 0) -> tuple[int, int]:
    """CTR-GCN's test crop (``p_interval=[ratio]``): drop ``(1-ratio)/2`` of the frames on each
    side; with several clips, the crops are evenly spaced over the valid range instead."""
    valid = max(int(valid), 1)
    if num_clips <= 1:
        bias = int((1 - ratio) * valid / 2)
        length = max(valid - 2 * bias, 1)
        return bias, length
    length = max(int(np.floor(valid * ratio)), 1)
    slack = valid - length
    start = int(round(slack * clip_index / (num_clips - 1)))
    return start, length


def uniform_indices(valid: int, clip_len: int, num_clips: int = 1, clip_index: int = 0,
                    offsets: np.ndarray | None = None) -> np.ndarray:
    """Uniform sampling: split ``valid`` frames into ``clip_len`` equal segments and take one frame
    per segment, at the segment's ``(clip_index + 0.5) / num_clips`` point (or at the given
    per-segment ``offsets`` in [0, 1) for random training sampling)."""
    valid = max(int(valid), 1)
    if offsets is None:
        offsets = np.full(clip_len, (clip_index + 0.5) / max(num_clips, 1))
    pos = (np.arange(clip_len, dtype=np.float64) + offsets) * valid / clip_len
    return np.clip(np.floor(pos).astype(np.int64), 0, valid - 1)


def linspace_indices(valid: int, clip_len: int) -> np.ndarray:
    """CTR-GCN's NW-UCLA test sampling: ``linspace(0, valid - 1, clip_len)`` truncated to ints
    (frames repeat when the clip is shorter than ``clip_len``)."""
    return np.linspace(0, max(int(valid), 1) - 1, clip_len).astype(np.int64)


def minmax_normalize(keypoints: np.ndarray, coord_dims: int = 3) -> np.ndarray:
    """CTR-GCN's NW-UCLA normalisation: each coordinate axis of the whole clip (present joints of
    every person and frame) mapped linearly onto [-1, 1]. It removes translation and per-axis
    scale, so centring and isotropic scaling before it change nothing. Absent joints stay zero;
    an axis with no extent maps to 0."""
    x = np.array(keypoints, dtype=np.float32, copy=True)
    present = joint_mask(x, coord_dims) > 0
    if not present.any():
        return x
    coords = x[..., :coord_dims]
    values = coords[present]
    low, high = values.min(axis=0), values.max(axis=0)
    extent = high - low
    flat = extent <= 0  # dividing by inf sends such an axis to 0
    out = 2 * (coords - low) / np.where(flat, np.inf, extent) - ~flat
    coords[...] = np.where(present[..., None], out, 0.0)
    return x


def pad_persons(keypoints: np.ndarray, max_persons: int) -> np.ndarray:
    """Pad with zero persons or truncate to ``max_persons`` (the first ones are kept)."""
    m = keypoints.shape[0]
    if m == max_persons:
        return keypoints
    if m > max_persons:
        return keypoints[:max_persons]
    pad = np.zeros((max_persons - m,) + keypoints.shape[1:], dtype=keypoints.dtype)
    return np.concatenate([keypoints, pad], axis=0)


def normalize_clip(keypoints: np.ndarray, layout: "str | Layout | Mapping | None", clip_len: int,
                   max_persons: int = 2, mode: str = "resize", crop_ratio: float = 0.95,
                   num_clips: int = 1, clip_index: int = 0, prenormalize: str | None = None,
                   coord_dims: int | None = None, spatial_norm: str | None = None) -> np.ndarray:
    """The deterministic test-time clip: (M, T, V, C) -> (max_persons, clip_len, V, C) float32.

    - ``prenormalize``: None (the data is already normalised, as in a store), ``"3d"``
      (:func:`pre_normalize_3d`) or ``"2d"`` (:func:`normalize_2d`) -- the edge runtime passes the
      same value the store's source used;
    - persons are padded with zeros or truncated to ``max_persons`` (the first ones are kept);
    - trailing all-zero frames are dropped;
    - ``mode="resize"``: CTR-GCN's centre crop (``crop_ratio`` of the valid frames) and linear
      resize to ``clip_len``; ``mode="uniform"``: one frame from the middle of each of
      ``clip_len`` equal segments (PYSKL-style uniform sampling);
    - ``num_clips`` / ``clip_index``: the ``clip_index``-th of ``num_clips`` evenly spaced clips
      (multi-clip testing).
    """
    x = np.asarray(keypoints, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"keypoints must be (M, T, V, C), got shape {x.shape}")
    if prenormalize == "3d":
        x = pre_normalize_3d(x, layout)
    elif prenormalize == "2d":
        x = normalize_2d(x, layout, coord_dims=coord_dims or 2)
    elif prenormalize not in (None, "none"):
        raise ValueError(f"prenormalize must be None, '3d' or '2d', got {prenormalize!r}")
    x = trim_frames(pad_persons(x, max_persons))
    valid = x.shape[1]
    if mode == "resize":
        start, length = center_crop_bounds(valid, crop_ratio, num_clips, clip_index)
        x = crop_resize(x, clip_len, start, length)
    elif mode == "uniform":
        x = x[:, uniform_indices(valid, clip_len, num_clips, clip_index)]
    elif mode == "sample":
        x = x[:, linspace_indices(valid, clip_len)]
    else:
        raise ValueError(f"mode must be one of {TEMPORAL_MODES}, got {mode!r}")
    if spatial_norm == "minmax":
        x = minmax_normalize(x, coord_dims or 3)
    elif spatial_norm not in (None, "none"):
        raise ValueError(f"spatial_norm must be None or 'minmax', got {spatial_norm!r}")
    return np.ascontiguousarray(x, dtype=np.float32)
