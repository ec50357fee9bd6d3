"""A small folder in the format docs/own_data.md describes, for the tests that follow the page."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Two arms and no torso (as NATOPS' hands-and-arms layout): a graph of two parts.
TWO_ARMS = """\
name: two_arms
num_joints: 6
edges: [[0, 1], [1, 2], [3, 4], [4, 5]]
centre: 1
joint_names: [shoulder_l, elbow_l, wrist_l, shoulder_r, elbow_r, wrist_r]
"""
CLASSES = ["wave", "clap", "point"]


def make_clips(root: Path, per_class: int = 6, frames: int = 20, dims: int = 3,
               persons: int = 1, seed: int = 0, label_names: bool = True) -> Path:
    """``root/clips/*.npy`` (T, 6, dims) or (persons, T, 6, dims), ``labels.csv`` (2 of each class
    in test), ``layout.yaml``, ``classes.txt``. 3D coordinates are in metres around z = 2.5 (a
    camera); the class decides the motion, so a short run learns something."""
    rng = np.random.default_rng(seed)
    (root / "clips").mkdir(parents=True, exist_ok=True)
    (root / "layout.yaml").write_text(TWO_ARMS)
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rows = ["name,label,split"]
    t = np.linspace(0, 2 * np.pi, frames)[:, None]
    base = np.array([[-0.2, 0, 0], [-0.4, 0, 0], [-0.6, 0, 0], [0.2, 0, 0], [0.4, 0, 0], [0.6, 0, 0]])
    for c, cls in enumerate(CLASSES):
        for k in range(per_class):
            x = np.repeat(base[None], frames, axis=0).copy()
            x[:, [2, 5], c % 2] += 0.3 * np.sin((c + 1) * t)
            x[:, :, 1] += 0.05 * c
            x[..., 2] += 2.5
            x += rng.normal(0, 0.01, x.shape)
            clip = x[..., :dims] if dims <= 3 else np.concatenate([x, np.ones_like(x[..., :1])], -1)
            if dims == 2:  # 2D keypoints with a detector score
                clip = np.concatenate([clip, rng.uniform(0.5, 1, clip.shape[:-1] + (1,))], -1)
            if persons > 1:
                clip = np.stack([clip + 0.5 * p for p in range(persons)])
            name = f"{cls}_{k:02d}"
            np.save(root / "clips" / f"{name}.npy", clip.astype(np.float32))
            label = cls if label_names else str(c)
            rows.append(f"clips/{name},{label},{'test' if k < 2 else 'train'}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root
