"""Northwestern-UCLA Multiview Action 3D from the ``all_sqe`` JSON release (CTR-GCN's format).

Each ``all_sqe/aAA_sSS_eEE_vVV.json`` holds ``{"file_name", "label" (1..10), "skeletons": [T][20][3]}``
(Kinect v1 camera space, metres). The store uses layout ``ucla20``, labels 0..9, per-sample fields
``action`` (the AA id), ``subject``, ``repetition`` and ``view``, and the standard cross-view split
``xview``: train = views 1 and 2 (1,020 sequences), test = view 3 (464). Every sequence goes
through :func:`~last_lite.data.normalize.pre_normalize_3d`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from last_lite.config_checks import parse_bool
from last_lite.data.normalize import pre_normalize_3d
from last_lite.data.ntu_skeleton import SkeletonFormatError
from last_lite.data.sources import Source
from last_lite.data.store import StoreWriter

ACTION_IDS = (1, 2, 3, 4, 5, 6, 8, 9, 11, 12)
CLASS_NAMES = ("pick up with one hand", "pick up with two hands", "drop trash", "walk around",
               "sit down", "stand up", "donning", "doffing", "throw", "carry")
_NAME = re.compile(r"a(\d+)_s(\d+)_e(\d+)_v(\d+)$")


def parse_name(stem: str) -> dict[str, int]:
    """``a01_s02_e03_v01`` -> {action: 1, subject: 2, repetition: 3, view: 1}."""
    m = _NAME.match(stem)
    if m is None:
        raise ValueError(f"not an NW-UCLA sample name: {stem!r}")
    a, s, e, v = (int(g) for g in m.groups())
    return {"action": a, "subject": s, "repetition": e, "view": v}


def read_sample(path: str | Path) -> tuple[np.ndarray, int]:
    """One JSON file -> ((1, T, 20, 3) float32 raw skeleton, label 0..9).

    Raises SkeletonFormatError (a ValueError naming the file) for anything malformed.
    """
    try:
        from last_lite.io import open_regular

        with open_regular(path, max_bytes=64 << 20) as f:  # a FIFO or a loop: refused, never waited on
            doc = json.loads(f.read().decode("utf-8"))
        skel = np.asarray(doc["skeletons"], dtype=np.float32)
        label = int(doc["label"]) - 1
    except OSError as exc:
        raise SkeletonFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError) as exc:
        raise SkeletonFormatError(path, f"not an NW-UCLA skeleton file "
                                        f"({type(exc).__name__}: {str(exc)[:200]})") from None
    if skel.ndim == 2:  # a single frame stored without its frame axis
        skel = skel[None]
    if skel.ndim != 3 or skel.shape[1:] != (20, 3):
        raise ValueError(f"{path}: skeletons must be [T][20][3], got shape {skel.shape}")
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"{path}: label {doc['label']} outside 1..{len(CLASS_NAMES)}")
    return skel[None], label


class NWUCLASource(Source):
    """NW-UCLA from ``root`` (the folder holding ``all_sqe/``, or ``all_sqe`` itself)."""

    name = "nw_ucla"
    version = 1

    def __init__(self, root: str | Path = "../shared/data/nw_ucla", normalize: bool = True) -> None:
        root = Path(root)
        self.dir = root / "all_sqe" if (root / "all_sqe").is_dir() else root
        self.normalize = parse_bool(normalize, "normalize (data.source.normalize)")

    def files(self) -> list[Path]:
        if not self.dir.is_dir():
            raise FileNotFoundError(f"NW-UCLA folder not found: {self.dir} (expected all_sqe/*.json)")
        files = sorted(self.dir.glob("a*_s*_e*_v*.json"))
        if not files:
            raise FileNotFoundError(f"no NW-UCLA aAA_sSS_eEE_vVV.json files in {self.dir}")
        return files

    def params(self) -> dict[str, Any]:
        # each file's size, mtime in nanoseconds and inode: a same-size file rewritten within a
        # second is still seen (a total and a whole-second maximum would miss it)
        h = hashlib.sha256()
        for f in self.files():
            st = f.stat()
            h.update(f"{f.name} {st.st_size} {st.st_mtime_ns} {st.st_ino}\n".encode())
        return {"dir": str(self.dir.resolve()), "normalize": self.normalize,
                "content": h.hexdigest()}

    def write(self, out_dir: Path, key: str) -> None:
        train, test = [], []
        with StoreWriter(out_dir, "ucla20", 3, class_names=list(CLASS_NAMES), source=key,
                         prenormalize="3d" if self.normalize else "none") as w:
            for path in self.files():
                fields = parse_name(path.stem)
                skel, label = read_sample(path)
                if ACTION_IDS[label] != fields["action"]:
                    raise ValueError(f"{path}: label {label + 1} does not match action "
                                     f"a{fields['action']:02d}")
                if self.normalize:
                    skel = pre_normalize_3d(skel, "ucla20")
                i = w.add(path.stem, skel, label, **fields)
                (test if fields["view"] == 3 else train).append(i)
            w.set_split("xview", "train", train)
            w.set_split("xview", "test", test)
