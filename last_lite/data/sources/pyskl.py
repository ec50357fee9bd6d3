"""PYSKL annotation pickles (``ntu60_3danno.pkl``, ``ntu60_hrnet.pkl``, ...).

The file is ``{"split": {name: [frame_dir, ...]}, "annotations": [{frame_dir, label, keypoint
(M, T, V, C), total_frames, keypoint_score? (M, T, V)}, ...]}``. A pickle can run arbitrary code
when loaded, so this source refuses to read one unless ``trusted=True`` is passed explicitly.

Split names ``<name>_train`` become split ``<name>`` part ``train``, ``<name>_val`` /
``<name>_test`` part ``test`` (PYSKL calls the test set "val"); any other key becomes split
``<key>`` part ``all``. A ``keypoint_score`` is appended as a last channel (``coord_dims`` stays the
coordinate count). ``normalize``: ``auto`` (3D -> :func:`pre_normalize_3d`, as PYSKL's
``PreNormalize3D``; 2D -> :func:`normalize_2d`), ``3d``, ``2d`` or ``none``.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from last_lite.config_checks import parse_bool
from last_lite.data.sources import Source
from last_lite.data.sources.custom import normalize_sample, plain, resolve_normalize
from last_lite.data.store import StoreWriter

DEFAULT_LAYOUTS = {25: "ntu25", 20: "ucla20", 17: "coco17", 18: "openpose18", 33: "mediapipe33"}


class UntrustedPickleError(PermissionError):
    """Raised when asked to read a pickle without ``trusted=True``."""


def _refuse(path: Path) -> UntrustedPickleError:
    return UntrustedPickleError(
        f"refusing to load the pickle {path}: unpickling can execute arbitrary code, so only load "
        f"PYSKL annotation files you obtained from a source you trust. To proceed, pass "
        f"trusted=True (Hydra: data.source.trusted=true); to avoid pickles altogether, convert the "
        f"data once into a store (a folder of .npy arrays, see the custom source).")


def split_part(key: str) -> tuple[str, str]:
    """``xsub_train`` -> (``xsub``, ``train``); ``xsub_val`` -> (``xsub``, ``test``)."""
    for suffix, part in (("_train", "train"), ("_val", "test"), ("_test", "test")):
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], part
    return key, "all"


class PYSKLSource(Source):
    name = "pyskl"
    version = 2

    def __init__(self, path: str | Path, trusted: bool = False, layout: Any = None,
                 normalize: str = "auto", class_names: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        # strictly: bool("false") is True, and this flag decides whether a pickle is opened
        self.trusted = parse_bool(trusted, "trusted (data.source.trusted)")
        if not self.trusted:
            raise _refuse(self.path)
        self.layout = layout if layout is None or isinstance(layout, str) else plain(layout)
        self.normalize = normalize
        self.class_names = list(class_names) if class_names is not None else None

    def params(self) -> dict[str, Any]:
        if not self.path.is_file():
            raise FileNotFoundError(f"PYSKL annotation file not found: {self.path}")
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return {"path": str(self.path.resolve()), "sha256": h.hexdigest(), "layout": self.layout,
                "normalize": self.normalize, "class_names": self.class_names}

    def load(self) -> dict:
        if self.trusted is not True:
            raise _refuse(self.path)
        with open(self.path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 -- explicitly trusted by the user
        if not isinstance(data, dict) or "annotations" not in data:
            raise ValueError(f"{self.path}: not a PYSKL annotation file (no 'annotations')")
        return data

    def write(self, out_dir: Path, key: str) -> None:
        data = self.load()
        anns = data["annotations"]
        if not anns:
            raise ValueError(f"{self.path}: no annotations")
        first = np.asarray(anns[0]["keypoint"])
        v, c = first.shape[-2], first.shape[-1]
        has_score = "keypoint_score" in anns[0]
        layout = self.layout or DEFAULT_LAYOUTS.get(v)
        if layout is None:
            raise ValueError(f"{self.path}: no default layout for {v} joints; pass layout=...")
        coord_dims = c
        channels = c + int(has_score)
        mode = resolve_normalize(self.normalize, coord_dims)
        labels = [int(a.get("label", -1)) for a in anns]
        n_cls = max(labels) + 1 if max(labels) >= 0 else 0
        class_names = self.class_names or [str(i) for i in range(n_cls)]
        index: dict[str, int] = {}
        skipped = []
        with StoreWriter(out_dir, layout, channels, class_names=class_names, source=key,
                         coord_dims=coord_dims, prenormalize=mode) as w:
            for ann, label in zip(anns, labels):
                x = np.asarray(ann["keypoint"], dtype=np.float32)
                if has_score:
                    x = np.concatenate([x, np.asarray(ann["keypoint_score"],
                                                      dtype=np.float32)[..., None]], axis=-1)
                t = int(ann.get("total_frames", x.shape[1]))
                x = x[:, :t]
                if x.ndim != 4 or x.shape[0] == 0 or x.shape[1] == 0:
                    skipped.append(str(ann["frame_dir"]))
                    continue
                x = normalize_sample(x, layout, mode, coord_dims)
                index[str(ann["frame_dir"])] = w.add(str(ann["frame_dir"]), x, label)
            for split_key, names in (data.get("split") or {}).items():
                name, part = split_part(str(split_key))
                w.set_split(name, part, [index[n] for n in names if n in index])
        if skipped:
            warnings.warn(f"{self.path}: skipped {len(skipped)} samples without persons or "
                          f"frames: {skipped[:10]}", stacklevel=2)
