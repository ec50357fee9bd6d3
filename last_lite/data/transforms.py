"""Skeleton augmentation (numpy only), on one sample (M, T, V, C).

Every transform is a callable ``t(x, rng) -> x`` taking an ``np.random.Generator`` (so a seeded
generator makes a pipeline reproducible). Absent persons and joints (all-zero coordinates) stay
zero. :func:`build_transform` builds the training or test pipeline from config keyword arguments.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from last_lite.data.normalize import (TEMPORAL_MODES, center_crop_bounds, crop_resize, joint_mask,
                                      linspace_indices, minmax_normalize, pad_persons, trim_frames,
                                      uniform_indices)

Transform = Callable[[np.ndarray, np.random.Generator], np.ndarray]

__all__ = [
    "Compose", "RandomCropResize", "CenterCropResize", "UniformSample", "RandomSample",
    "LinspaceSample", "RandomRotation", "RandomScale", "RandomShear", "GaussianNoise",
    "MinMaxNormalize", "PadPersons", "build_transform",
]


def _apply_linear(x: np.ndarray, matrix: np.ndarray, coord_dims: int) -> np.ndarray:
    """``x[..., :d] @ matrix.T`` on the coordinates, keeping absent joints zero."""
    mask = joint_mask(x, coord_dims)
    out = x.astype(np.float32, copy=True)
    out[..., :coord_dims] = (x[..., :coord_dims] @ matrix.T.astype(np.float32)) * mask[..., None]
    return out


class Compose:
    """Apply transforms in order with one generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for t in self.transforms:
            x = t(x, rng)
        return np.ascontiguousarray(x, dtype=np.float32)

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class RandomCropResize:
    """CTR-GCN's training ``valid_crop_resize``: crop a random portion ``p ~ U(p_min, p_max)`` of the
    valid frames (at least ``min_crop_len`` frames, at most all of them) at a random start, then
    resize linearly to ``clip_len``."""

    def __init__(self, clip_len: int, p_interval: Sequence[float] = (0.5, 1.0),
                 min_crop_len: int | None = None) -> None:
        self.clip_len = int(clip_len)
        self.p_interval = (float(p_interval[0]), float(p_interval[-1]))
        self.min_crop_len = self.clip_len if min_crop_len is None else int(min_crop_len)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = trim_frames(x)
        valid = x.shape[1]
        lo, hi = self.p_interval
        p = rng.random() * (hi - lo) + lo
        length = int(min(max(int(np.floor(valid * p)), self.min_crop_len), valid))
        length = max(length, 1)
        start = int(rng.integers(0, valid - length + 1))
        return crop_resize(x, self.clip_len, start, length)

    def __repr__(self) -> str:
        return f"RandomCropResize(clip_len={self.clip_len}, p_interval={self.p_interval})"


class CenterCropResize:
    """Deterministic centre crop of ``ratio`` of the valid frames, resized to ``clip_len``."""

    def __init__(self, clip_len: int, ratio: float = 0.95, num_clips: int = 1,
                 clip_index: int = 0) -> None:
        self.clip_len, self.ratio = int(clip_len), float(ratio)
        self.num_clips, self.clip_index = int(num_clips), int(clip_index)

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        x = trim_frames(x)
        start, length = center_crop_bounds(x.shape[1], self.ratio, self.num_clips, self.clip_index)
        return crop_resize(x, self.clip_len, start, length)

    def __repr__(self) -> str:
        return f"CenterCropResize(clip_len={self.clip_len}, ratio={self.ratio})"


class UniformSample:
    """PYSKL-style uniform sampling: one frame per each of ``clip_len`` equal segments, at a random
    point of the segment when ``random`` (training), else at its middle."""

    def __init__(self, clip_len: int, random: bool = True, num_clips: int = 1,
                 clip_index: int = 0) -> None:
        self.clip_len, self.random = int(clip_len), bool(random)
        self.num_clips, self.clip_index = int(num_clips), int(clip_index)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = trim_frames(x)
        offsets = rng.random(self.clip_len) if self.random else None
        return x[:, uniform_indices(x.shape[1], self.clip_len, self.num_clips, self.clip_index,
                                    offsets)]

    def __repr__(self) -> str:
        return f"UniformSample(clip_len={self.clip_len}, random={self.random})"


class RandomSample:
    """CTR-GCN's NW-UCLA training sampling: ``clip_len`` frame indices drawn uniformly with
    replacement from the valid frames, then sorted (every frame of a short clip can appear)."""

    def __init__(self, clip_len: int) -> None:
        self.clip_len = int(clip_len)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = trim_frames(x)
        return x[:, np.sort(rng.integers(0, x.shape[1], self.clip_len))]

    def __repr__(self) -> str:
        return f"RandomSample(clip_len={self.clip_len})"


class LinspaceSample:
    """The deterministic counterpart of :class:`RandomSample` (CTR-GCN's NW-UCLA test clip)."""

    def __init__(self, clip_len: int) -> None:
        self.clip_len = int(clip_len)

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        x = trim_frames(x)
        return x[:, linspace_indices(x.shape[1], self.clip_len)]

    def __repr__(self) -> str:
        return f"LinspaceSample(clip_len={self.clip_len})"


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, s], [0, -s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])


class RandomRotation:
    """Rotate by angles drawn uniformly from ``[-r, r]`` radians per axis (x, y, z), as CTR-GCN's
    ``random_rot`` (``theta=0.3``). 2D data is rotated in the image plane by the z angle."""

    def __init__(self, angle_range: float | Sequence[float] = 0.3, coord_dims: int = 3) -> None:
        r = np.broadcast_to(np.asarray(angle_range, dtype=np.float64), (3,))
        self.angle_range = tuple(float(a) for a in r)
        self.coord_dims = int(coord_dims)

    def matrix(self, rng: np.random.Generator) -> np.ndarray:
        a = [rng.uniform(-r, r) if r > 0 else 0.0 for r in self.angle_range]
        if self.coord_dims == 2:
            return _rot_z(a[2])[:2, :2]
        return _rot_z(a[2]) @ _rot_y(a[1]) @ _rot_x(a[0])

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _apply_linear(x, self.matrix(rng), self.coord_dims)

    def __repr__(self) -> str:
        return f"RandomRotation(angle_range={self.angle_range})"


class RandomScale:
    """Scale each coordinate axis by a factor drawn from ``U(1 - s, 1 + s)`` (PYSKL RandomScale)."""

    def __init__(self, scale: float = 0.1, coord_dims: int = 3) -> None:
        self.scale, self.coord_dims = float(scale), int(coord_dims)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        f = rng.uniform(1 - self.scale, 1 + self.scale, size=self.coord_dims)
        return _apply_linear(x, np.diag(f), self.coord_dims)

    def __repr__(self) -> str:
        return f"RandomScale(scale={self.scale})"


class RandomShear:
    """Shear with off-diagonal entries drawn from ``U(-s, s)`` (the AimCLR/CrosSCLR augmentation)."""

    def __init__(self, shear: float = 0.3, coord_dims: int = 3) -> None:
        self.shear, self.coord_dims = float(shear), int(coord_dims)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        d = self.coord_dims
        m = np.eye(d)
        off = ~np.eye(d, dtype=bool)
        m[off] = rng.uniform(-self.shear, self.shear, size=d * d - d)
        return _apply_linear(x, m, d)

    def __repr__(self) -> str:
        return f"RandomShear(shear={self.shear})"


class GaussianNoise:
    """Add N(0, std^2) noise to the coordinates of present joints."""

    def __init__(self, std: float = 0.01, coord_dims: int = 3) -> None:
        self.std, self.coord_dims = float(std), int(coord_dims)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        d = self.coord_dims
        mask = joint_mask(x, d)
        out = x.astype(np.float32, copy=True)
        noise = rng.normal(0.0, self.std, size=x[..., :d].shape).astype(np.float32)
        out[..., :d] = x[..., :d] + noise * mask[..., None]
        return out

    def __repr__(self) -> str:
        return f"GaussianNoise(std={self.std})"


class MinMaxNormalize:
    """Each coordinate axis of the clip onto [-1, 1] (:func:`minmax_normalize`); also applied at
    test time, so it is part of what the model expects."""

    def __init__(self, coord_dims: int = 3) -> None:
        self.coord_dims = int(coord_dims)

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return minmax_normalize(x, self.coord_dims)

    def __repr__(self) -> str:
        return "MinMaxNormalize()"


class PadPersons:
    """Pad with zero persons or truncate to ``max_persons``."""

    def __init__(self, max_persons: int = 2) -> None:
        self.max_persons = int(max_persons)

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return pad_persons(x, self.max_persons)

    def __repr__(self) -> str:
        return f"PadPersons({self.max_persons})"


def build_transform(clip_len: int = 64, train: bool = True, max_persons: int = 2,
                    coord_dims: int = 3, temporal: str = "resize",
                    p_interval: Sequence[float] = (0.5, 1.0), min_crop_len: int | None = None,
                    test_crop_ratio: float = 0.95, rotate: float | Sequence[float] = 0.0,
                    scale: float = 0.0, shear: float = 0.0, noise_std: float = 0.0,
                    num_clips: int = 1, clip_index: int = 0,
                    spatial_norm: str | None = None) -> Compose:
    """The pipeline from config kwargs.

    ``temporal``: ``"resize"`` (CTR-GCN crop + linear resize; ``p_interval`` for training,
    ``test_crop_ratio`` centre crop for testing), ``"uniform"`` (uniform sampling) or ``"sample"``
    (CTR-GCN's NW-UCLA loader: random with replacement, sorted, for training; linspace for
    testing). Spatial augmentations (``rotate`` radians per axis, ``scale``, ``shear``,
    ``noise_std``; 0 = off) apply only when ``train``; ``spatial_norm="minmax"`` then maps each axis
    onto [-1, 1] in both pipelines. Persons are padded/truncated to ``max_persons`` first. The test
    pipeline matches :func:`last_lite.data.normalize.normalize_clip` exactly.
    """
    ts: list[Transform] = [PadPersons(max_persons)]
    if temporal == "resize":
        ts.append(RandomCropResize(clip_len, p_interval, min_crop_len) if train
                  else CenterCropResize(clip_len, test_crop_ratio, num_clips, clip_index))
    elif temporal == "uniform":
        ts.append(UniformSample(clip_len, random=train, num_clips=num_clips, clip_index=clip_index))
    elif temporal == "sample":
        ts.append(RandomSample(clip_len) if train else LinspaceSample(clip_len))
    else:
        raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {temporal!r}")
    if train:
        if np.any(np.asarray(rotate) > 0):
            ts.append(RandomRotation(rotate, coord_dims))
        if scale > 0:
            ts.append(RandomScale(scale, coord_dims))
        if shear > 0:
            ts.append(RandomShear(shear, coord_dims))
        if noise_std > 0:
            ts.append(GaussianNoise(noise_std, coord_dims))
    if spatial_norm == "minmax":
        ts.append(MinMaxNormalize(coord_dims))
    elif spatial_norm not in (None, "none"):
        raise ValueError(f"spatial_norm must be null or 'minmax', got {spatial_norm!r}")
    return Compose(ts)
