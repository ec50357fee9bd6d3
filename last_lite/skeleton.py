"""Skeleton layouts (numpy only): joints, bones, centre, parents, body regions and the joints
that define the pre-normalisation frame, for every format the package reads.

The one layout module data/ (sources, store, normalisation), training (masking), models (graph
partitions, in :mod:`last_lite.models.graph`), export (metadata) and the edge runtime share; the
runtime imports it, so it must never import torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

REGION_NAMES = ("torso", "left_arm", "right_arm", "left_leg", "right_leg")


@dataclass(frozen=True)
class Layout:
    """A skeleton graph: joints, undirected bones, a centre joint, parents and body regions.

    ``parents[v]`` is the next joint towards ``center`` (the centre is its own parent), so the
    bone stream ``x[v] - x[parents[v]]`` is zero at the root. ``regions`` maps each of
    REGION_NAMES to its joints (the pretraining masks hide whole regions). ``norm_*`` name the
    joints the pre-normalisation uses: the centring joint, the spine axis sent to +z
    (bottom, top) and the shoulder axis sent to +x (right, left); None where the layout lacks them.
    """

    name: str
    num_joints: int
    edges: tuple[tuple[int, int], ...]
    center: int
    joint_names: tuple[str, ...] = ()
    regions: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    norm_center: int | None = None
    norm_zaxis: tuple[int, int] | None = None
    norm_xaxis: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for i, j in self.edges:
            if not (0 <= i < self.num_joints and 0 <= j < self.num_joints) or i == j:
                raise ValueError(f"layout {self.name!r}: bad edge ({i}, {j}) for {self.num_joints} joints")
        if not 0 <= self.center < self.num_joints:
            raise ValueError(f"layout {self.name!r}: centre {self.center} out of range")
        # A graph of several parts (two arms and no torso, two hands) is allowed: each part gets
        # its own root (see ``parents``); the graph convolutions never connect the parts.

    @property
    def parents(self) -> np.ndarray:
        """Parent of every joint in the BFS tree rooted at the centre (root is its own parent).
        In a graph of several parts, each part the centre does not reach is rooted at its own
        graph centre (so the bone stream is zero there too)."""
        adj = _neighbours(self.num_joints, self.edges)
        parents = np.full(self.num_joints, -1, dtype=np.int64)
        dist = None
        root = self.center
        while root is not None:
            parents[root] = root
            queue = deque([root])
            while queue:
                i = queue.popleft()
                for j in sorted(adj[i]):
                    if parents[j] < 0:
                        parents[j] = i
                        queue.append(j)
            left = np.flatnonzero(parents < 0)
            if not len(left):
                break
            if dist is None:
                dist = hop_distance(self.num_joints, self.edges)
            part = np.flatnonzero(np.isfinite(dist[left[0]]))
            root = int(part[np.argmin(dist[np.ix_(part, part)].max(axis=1))])
        return parents

    @property
    def parts(self) -> int:
        """Connected parts of the graph (1 for a whole body)."""
        return int(len(np.unique(self.parents[self.parents == np.arange(self.num_joints)])))


def _neighbours(num_joints: int, edges: Sequence[tuple[int, int]]) -> list[set[int]]:
    adj: list[set[int]] = [set() for _ in range(num_joints)]
    for i, j in edges:
        adj[i].add(j)
        adj[j].add(i)
    return adj


def hop_distance(num_joints: int, edges: Sequence[tuple[int, int]]) -> np.ndarray:
    """All-pairs shortest-path lengths in hops (inf where unreachable), by BFS."""
    adj = _neighbours(num_joints, edges)
    dist = np.full((num_joints, num_joints), np.inf)
    for s in range(num_joints):
        dist[s, s] = 0
        queue = deque([s])
        while queue:
            i = queue.popleft()
            for j in adj[i]:
                if np.isinf(dist[s, j]):
                    dist[s, j] = dist[s, i] + 1
                    queue.append(j)
    return dist


def _one_based(pairs: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    return tuple((i - 1, j - 1) for i, j in pairs)


_NTU25 = Layout(
    name="ntu25",
    num_joints=25,
    edges=_one_based([(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21),
                      (10, 9), (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1),
                      (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25), (25, 12)]),
    center=20,
    joint_names=("SpineBase", "SpineMid", "Neck", "Head", "ShoulderL", "ElbowL", "WristL", "HandL",
                 "ShoulderR", "ElbowR", "WristR", "HandR", "HipL", "KneeL", "AnkleL", "FootL",
                 "HipR", "KneeR", "AnkleR", "FootR", "SpineShoulder", "HandTipL", "ThumbL",
                 "HandTipR", "ThumbR"),
    regions={"torso": (0, 1, 2, 3, 20), "left_arm": (4, 5, 6, 7, 21, 22),
             "right_arm": (8, 9, 10, 11, 23, 24), "left_leg": (12, 13, 14, 15),
             "right_leg": (16, 17, 18, 19)},
    norm_center=1, norm_zaxis=(0, 1), norm_xaxis=(8, 4),
)

_UCLA20 = Layout(
    name="ucla20",
    num_joints=20,
    edges=((0, 1), (1, 2), (2, 3), (2, 4), (4, 5), (5, 6), (6, 7), (2, 8), (8, 9), (9, 10),
           (10, 11), (0, 12), (12, 13), (13, 14), (14, 15), (0, 16), (16, 17), (17, 18), (18, 19)),
    center=2,
    joint_names=("HipCenter", "Spine", "ShoulderCenter", "Head", "ShoulderL", "ElbowL", "WristL",
                 "HandL", "ShoulderR", "ElbowR", "WristR", "HandR", "HipL", "KneeL", "AnkleL",
                 "FootL", "HipR", "KneeR", "AnkleR", "FootR"),
    regions={"torso": (0, 1, 2, 3), "left_arm": (4, 5, 6, 7), "right_arm": (8, 9, 10, 11),
             "left_leg": (12, 13, 14, 15), "right_leg": (16, 17, 18, 19)},
    norm_center=1, norm_zaxis=(0, 1), norm_xaxis=(8, 4),
)

# COCO-17 (0 nose .. 16 right ankle) with the usual face/body edges; centre: nose-free torso is
# absent, so the left shoulder's graph centre is computed like a custom layout would be.
_COCO17 = Layout(
    name="coco17",
    num_joints=17,
    edges=((0, 1), (0, 2), (1, 3), (2, 4), (0, 5), (0, 6), (5, 7), (7, 9), (6, 8), (8, 10),
           (5, 11), (6, 12), (11, 13), (13, 15), (12, 14), (14, 16), (11, 12), (5, 6)),
    center=0,
    joint_names=("nose", "eyeL", "eyeR", "earL", "earR", "shoulderL", "shoulderR", "elbowL",
                 "elbowR", "wristL", "wristR", "hipL", "hipR", "kneeL", "kneeR", "ankleL", "ankleR"),
    regions={"torso": (0, 1, 2, 3, 4, 5, 6), "left_arm": (7, 9), "right_arm": (8, 10),
             "left_leg": (11, 13, 15), "right_leg": (12, 14, 16)},
    norm_center=0, norm_zaxis=None, norm_xaxis=(6, 5),
)

# OpenPose COCO-18: 1 is the neck.
_OPENPOSE18 = Layout(
    name="openpose18",
    num_joints=18,
    edges=((4, 3), (3, 2), (7, 6), (6, 5), (13, 12), (12, 11), (10, 9), (9, 8), (11, 5), (8, 2),
           (5, 1), (2, 1), (0, 1), (15, 0), (14, 0), (17, 15), (16, 14)),
    center=1,
    joint_names=("nose", "neck", "shoulderR", "elbowR", "wristR", "shoulderL", "elbowL", "wristL",
                 "hipR", "kneeR", "ankleR", "hipL", "kneeL", "ankleL", "eyeR", "eyeL", "earR", "earL"),
    regions={"torso": (0, 1, 14, 15, 16, 17), "left_arm": (5, 6, 7), "right_arm": (2, 3, 4),
             "left_leg": (11, 12, 13), "right_leg": (8, 9, 10)},
    norm_center=1, norm_zaxis=None, norm_xaxis=(2, 5),
)

# MediaPipe Pose, 33 landmarks, with its published POSE_CONNECTIONS.
_MEDIAPIPE33 = Layout(
    name="mediapipe33",
    num_joints=33,
    edges=((0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10), (11, 12),
           (11, 13), (13, 15), (15, 17), (15, 19), (15, 21), (17, 19), (12, 14), (14, 16),
           (16, 18), (16, 20), (16, 22), (18, 20), (11, 23), (12, 24), (23, 24), (23, 25),
           (24, 26), (25, 27), (26, 28), (27, 29), (28, 30), (29, 31), (30, 32), (27, 31),
           (28, 32), (0, 9), (0, 10), (0, 11), (0, 12)),
    center=0,
    joint_names=tuple(f"mp{i}" for i in range(33)),
    regions={"torso": tuple(range(11)) + (11, 12), "left_arm": (13, 15, 17, 19, 21),
             "right_arm": (14, 16, 18, 20, 22), "left_leg": (23, 25, 27, 29, 31),
             "right_leg": (24, 26, 28, 30, 32)},
    norm_center=0, norm_zaxis=None, norm_xaxis=(12, 11),
)

LAYOUTS: dict[str, Layout] = {
    layout.name: layout for layout in (_NTU25, _UCLA20, _COCO17, _OPENPOSE18, _MEDIAPIPE33)
}
LAYOUTS["kinect20"] = _UCLA20


def graph_center(num_joints: int, edges: Sequence[tuple[int, int]]) -> int:
    """The joint whose largest hop distance to any other joint is smallest (lowest index on ties);
    in a graph of several parts, that joint of the largest part."""
    dist = hop_distance(num_joints, edges)
    reach = np.isfinite(dist)
    size = reach.sum(axis=1)
    ecc = np.where(reach, dist, 0).max(axis=1)
    candidates = np.flatnonzero(size == size.max())
    return int(candidates[np.argmin(ecc[candidates])])


def custom_layout(edges: Sequence[Sequence[int]], num_joints: int | None = None,
                  center: int | None = None, name: str = "custom",
                  regions: Mapping[str, Sequence[int]] | None = None,
                  centre: int | None = None, joint_names: Sequence[str] | None = None) -> Layout:
    """A layout from a plain 0-based edge list (as written in a config or a layout file);
    ``centre`` is accepted as a spelling of ``center``. The graph may have several parts."""
    if center is None:
        center = centre
    if not edges:
        raise ValueError("a custom layout needs at least one edge (0-based joint pairs)")
    pairs = tuple((int(i), int(j)) for i, j in edges)
    if num_joints is None:
        num_joints = 1 + max(max(p) for p in pairs)
    if center is None:
        center = graph_center(num_joints, pairs)
    region_map = {k: tuple(int(j) for j in v) for k, v in (regions or {}).items()}
    unknown = set(region_map) - set(REGION_NAMES)
    if unknown:
        raise ValueError(f"unknown region names {sorted(unknown)}; expected {REGION_NAMES}")
    if not region_map:
        region_map = {"torso": tuple(range(num_joints))}
    return Layout(name=name, num_joints=num_joints, edges=pairs, center=int(center),
                  joint_names=tuple(str(n) for n in joint_names or ()),
                  regions=region_map, norm_center=int(center))


def get_layout(layout: "str | Layout | Mapping") -> Layout:
    """Resolve a layout name, a Layout, or a mapping ``{edges, num_joints?, center?, regions?}``."""
    if isinstance(layout, Layout):
        return layout
    if isinstance(layout, str):
        try:
            return LAYOUTS[layout]
        except KeyError:
            raise ValueError(f"unknown layout {layout!r}; known: {sorted(LAYOUTS)}") from None
    if isinstance(layout, Mapping) or hasattr(layout, "keys"):
        spec = dict(layout)
        if "edges" not in spec:
            raise ValueError("a custom layout needs 'edges' (a list of 0-based joint pairs)")
        return custom_layout(**spec)
    raise TypeError(f"layout must be a name, a Layout or a mapping with 'edges', got {type(layout)}")
