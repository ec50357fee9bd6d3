"""Layout adapters between skeleton sensors (numpy only; the edge runtime imports this module).

An adapter turns the joints of one layout into the joints of another: each output joint is one
input joint or the mean of a few (a derived joint: hip centre, spine, neck...). It is a matrix
``W`` (out joints x in joints, every row summing to 1) applied along the joint axis, so it
commutes with translations and rotations (the pre-normalisation). With ``mask_absent`` (raw
frames, where an all-zero joint is absent) an output joint built from an absent input joint is
absent too, never a mean pulled towards the origin.

Direct adapters (tables in docs/runtime.md, "Layout adapters"):

- ``ntu25 -> ucla20``: Kinect v2 -> Kinect v1, an exact subset (v1's ShoulderCenter is v2's
  SpineShoulder);
- ``mediapipe33 -> ntu25``: hip centre, spine, shoulder centre, neck, head and hands derived;
- ``mediapipe33 -> coco17``: a subset;
- ``coco17 -> openpose18`` (neck = shoulder centre) and ``openpose18 -> coco17`` (a subset).

Chains are composed (``mediapipe33 -> ucla20`` = ``mediapipe33 -> ntu25 -> ucla20``,
``mediapipe33 -> openpose18``). :func:`get_adapter` raises :class:`AdapterError` naming both
layouts where no chain exists.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from last_lite.skeleton import LAYOUTS, Layout, get_layout

__all__ = ["AdapterError", "JointAdapter", "ADAPTER_TABLES", "adapter_pairs", "get_adapter",
           "layout_from_joint_count", "layout_name"]


class AdapterError(ValueError):
    """No adapter between two layouts (the message names both)."""


# A joint spec: an input joint index, or a tuple of input joint indices averaged.
JointSpec = "int | tuple[int, ...]"

_MP = {name: i for i, name in enumerate((
    "nose", "eye_inner_l", "eye_l", "eye_outer_l", "eye_inner_r", "eye_r", "eye_outer_r", "ear_l",
    "ear_r", "mouth_l", "mouth_r", "shoulder_l", "shoulder_r", "elbow_l", "elbow_r", "wrist_l",
    "wrist_r", "pinky_l", "pinky_r", "index_l", "index_r", "thumb_l", "thumb_r", "hip_l", "hip_r",
    "knee_l", "knee_r", "ankle_l", "ankle_r", "heel_l", "heel_r", "foot_index_l", "foot_index_r"))}
MEDIAPIPE33_NAMES = tuple(_MP)


def _mp(*names: str) -> int | tuple[int, ...]:
    idx = tuple(_MP[n] for n in names)
    return idx[0] if len(idx) == 1 else idx


# Each table: one entry per OUTPUT joint, in the output layout's order.
ADAPTER_TABLES: dict[tuple[str, str], tuple] = {
    # Kinect v2 (NTU) -> Kinect v1 (NW-UCLA): joints 1-20 of v2 in v1's order, with v1's
    # ShoulderCenter = v2's SpineShoulder (20); v2's Neck, hand tips and thumbs are dropped.
    ("ntu25", "ucla20"): (0, 1, 20, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19),
    # MediaPipe Pose (33 landmarks; "left" = the person's left, as Kinect's) -> Kinect v2.
    ("mediapipe33", "ntu25"): (
        _mp("hip_l", "hip_r"),                                   # SpineBase = hip centre
        _mp("hip_l", "hip_r", "shoulder_l", "shoulder_r"),       # SpineMid = mid hip/shoulder centres
        _mp("shoulder_l", "shoulder_r", "mouth_l", "mouth_r"),   # Neck = mid shoulder centre/mouth
        _mp("ear_l", "ear_r"),                                   # Head = ear centre
        _mp("shoulder_l"), _mp("elbow_l"), _mp("wrist_l"),
        _mp("wrist_l", "pinky_l", "index_l"),                    # HandL = palm centre
        _mp("shoulder_r"), _mp("elbow_r"), _mp("wrist_r"),
        _mp("wrist_r", "pinky_r", "index_r"),                    # HandR = palm centre
        _mp("hip_l"), _mp("knee_l"), _mp("ankle_l"), _mp("foot_index_l"),
        _mp("hip_r"), _mp("knee_r"), _mp("ankle_r"), _mp("foot_index_r"),
        _mp("shoulder_l", "shoulder_r"),                         # SpineShoulder = shoulder centre
        _mp("index_l"), _mp("thumb_l"), _mp("index_r"), _mp("thumb_r"),
    ),
    ("mediapipe33", "coco17"): _mp("nose", "eye_l", "eye_r", "ear_l", "ear_r", "shoulder_l",
                                   "shoulder_r", "elbow_l", "elbow_r", "wrist_l", "wrist_r", "hip_l",
                                   "hip_r", "knee_l", "knee_r", "ankle_l", "ankle_r"),
    # COCO-17 -> OpenPose-18: neck = shoulder centre.
    ("coco17", "openpose18"): (0, (5, 6), 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3),
    # OpenPose-18 -> COCO-17: a subset (the neck is dropped).
    ("openpose18", "coco17"): (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10),
}


def layout_name(layout: "str | Layout | Mapping") -> str:
    """The canonical name of a layout (``kinect20`` -> ``ucla20``; custom layouts: ``custom``)."""
    if isinstance(layout, str) and layout in LAYOUTS:
        return LAYOUTS[layout].name
    if isinstance(layout, Layout):
        return layout.name
    return get_layout(layout).name


def _known_name(layout) -> str:
    if isinstance(layout, str) and layout not in LAYOUTS:
        raise AdapterError(f"unknown layout {layout!r}; known: {', '.join(sorted(LAYOUTS))}")
    return layout_name(layout)


def layout_from_joint_count(num_joints: int) -> str | None:
    """The built-in layout with this many joints, where exactly one has (None otherwise)."""
    names = {lay.name for lay in LAYOUTS.values() if lay.num_joints == num_joints}
    return names.pop() if len(names) == 1 else None


def _matrix(table: Sequence, n_in: int) -> np.ndarray:
    w = np.zeros((len(table), n_in), np.float64)
    for out, spec in enumerate(table):
        idx = (spec,) if isinstance(spec, int) else tuple(spec)
        w[out, list(idx)] = 1.0 / len(idx)
    return w


@dataclass(frozen=True)
class JointAdapter:
    """``source`` joints -> ``target`` joints: ``matrix`` (target V x source V), rows summing to 1."""

    source: str
    target: str
    matrix: np.ndarray

    @property
    def source_joints(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def is_subset(self) -> bool:
        """Every output joint is one input joint (no derived joint)."""
        return bool(((self.matrix == 0) | (self.matrix == 1)).all() and (self.matrix.sum(1) == 1).all())

    def apply(self, x: np.ndarray, mask_absent: bool = True) -> np.ndarray:
        """``x`` (..., V_source, C) -> (..., V_target, C) float32. With ``mask_absent``, an output
        joint is absent (zeros) where any joint it is made of is absent (all zeros)."""
        x = np.asarray(x)
        if x.ndim < 2 or x.shape[-2] != self.source_joints:
            raise AdapterError(f"the {self.source} -> {self.target} adapter takes (..., "
                               f"{self.source_joints}, C) joints, got shape {x.shape}")
        out = np.einsum("wv,...vc->...wc", self.matrix, x.astype(np.float64, copy=False))
        if mask_absent:
            absent = ~np.any(x != 0, axis=-1)                                  # (..., V_source)
            hit = np.einsum("wv,...v->...w", (self.matrix != 0).astype(np.float64), absent.astype(np.float64))
            out[hit > 0] = 0.0
        return out.astype(np.float32)

    def then(self, other: "JointAdapter") -> "JointAdapter":
        if other.source != self.target:
            raise AdapterError(f"cannot chain {self.source} -> {self.target} with {other.source} -> {other.target}")
        return JointAdapter(self.source, other.target, other.matrix @ self.matrix)


def _direct() -> dict[tuple[str, str], JointAdapter]:
    out = {}
    for (src, dst), table in ADAPTER_TABLES.items():
        n_in, n_out = LAYOUTS[src].num_joints, LAYOUTS[dst].num_joints
        if len(table) != n_out:
            raise AssertionError(f"adapter {src} -> {dst}: {len(table)} rows for {n_out} joints")
        out[(src, dst)] = JointAdapter(src, dst, _matrix(table, n_in))
    return out


_DIRECT = _direct()


def adapter_pairs() -> list[tuple[str, str]]:
    """Every (source, target) pair :func:`get_adapter` can serve (chains included)."""
    names = sorted({n for pair in _DIRECT for n in pair})
    return [(a, b) for a in names for b in names if a != b and _chain(a, b) is not None]


def _chain(source: str, target: str) -> list[JointAdapter] | None:
    queue: deque[tuple[str, list[JointAdapter]]] = deque([(source, [])])
    seen = {source}
    while queue:
        node, path = queue.popleft()
        if node == target:
            return path
        for (src, dst), adapter in _DIRECT.items():
            if src == node and dst not in seen:
                seen.add(dst)
                queue.append((dst, path + [adapter]))
    return None


def get_adapter(source: "str | Layout | Mapping", target: "str | Layout | Mapping") -> JointAdapter | None:
    """The adapter from ``source`` to ``target`` layout; None when they are the same layout.
    Raises :class:`AdapterError` naming both layouts where no adapter exists."""
    src, dst = _known_name(source), _known_name(target)
    if src == dst and (src != "custom" or get_layout(source).num_joints == get_layout(target).num_joints):
        return None  # the same layout (two custom layouts: taken as the same where joint counts agree)
    chain = _chain(src, dst) if src != "custom" and dst != "custom" else None
    if not chain:
        known = ", ".join(f"{a} -> {b}" for a, b in adapter_pairs())
        raise AdapterError(f"no layout adapter from {src} to {dst} (the model reads {dst}, the input "
                           f"is {src}); adapters: {known}")
    adapter = chain[0]
    for nxt in chain[1:]:
        adapter = adapter.then(nxt)
    return adapter
