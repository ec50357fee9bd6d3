"""A folder of per-sample ``.npy`` arrays plus a CSV ``name,label,split``.

Each array is (T, V, C) or (M, T, V, C), loaded with ``allow_pickle=False``. ``name`` is the file
name relative to ``root`` (``.npy`` added when missing); ``label`` an integer (empty or -1 =
unlabelled) or a class name (class names are then sorted unless ``class_names`` gives the order);
``split`` the part (``train``, ``val``, ``test`` or anything else). The store gets one split,
``split_name`` (default ``custom``), with those parts.

``layout`` is a registered name (``coco17``, ``openpose18``, ``mediapipe33``, ``ntu25``, ...) or a
custom mapping ``{edges: [[i, j], ...], num_joints?, center?}``. For 2D keypoints with a confidence
score (C = 3) pass ``coord_dims=2``. ``normalize``: ``auto`` (``3d`` when ``coord_dims`` is 3, else
``2d``), ``3d`` (:func:`pre_normalize_3d`), ``2d`` (:func:`normalize_2d`) or ``none``.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from last_lite.data.normalize import normalize_2d, pre_normalize_3d
from last_lite.data.ntu_skeleton import SkeletonFormatError
from last_lite.data.sources import Source
from last_lite.data.store import MAX_CLASSES, StoreWriter, map_npy
from last_lite.skeleton import get_layout


def plain(obj: Any) -> Any:
    """Config containers (e.g. OmegaConf) -> plain dicts and lists."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)):
        return [plain(v) for v in obj]
    return obj


def normalize_sample(x: np.ndarray, layout: Any, mode: str, coord_dims: int) -> np.ndarray:
    """Apply the chosen normalisation (``3d``, ``2d`` or ``none``) to one (M, T, V, C) sample."""
    if mode == "3d":
        return pre_normalize_3d(x, layout)
    if mode == "2d":
        return normalize_2d(x, layout, coord_dims=coord_dims)
    if mode == "none":
        return np.asarray(x, dtype=np.float32)
    raise ValueError(f"normalize must be 'auto', '3d', '2d' or 'none', got {mode!r}")


def resolve_normalize(mode: str, coord_dims: int) -> str:
    if mode == "auto":
        return "3d" if coord_dims == 3 else "2d"
    return mode


def load_array(path: Path) -> np.ndarray:
    """One sample file as float32: a plain numeric ``.npy`` (no pickle). It is memory-mapped
    first, so a header declaring a huge shape costs nothing; SkeletonFormatError otherwise."""
    try:
        x = map_npy(path)
        if not isinstance(x, np.ndarray):
            raise ValueError("not a single .npy array (an .npz archive?)")
        if x.dtype.kind not in "fiu":
            raise ValueError(f"expected a numeric array, got dtype {x.dtype}")
        return np.array(x, dtype=np.float32)
    except OSError as exc:
        raise SkeletonFormatError(path, f"cannot read file: {exc.strerror or exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # numpy raises many types for a damaged file (ValueError, EOFError, ...)
        raise SkeletonFormatError(path, f"not a readable .npy array ({type(exc).__name__}: "
                                        f"{str(exc)[:200]})") from None


class CustomSource(Source):
    name = "custom"
    version = 1

    def __init__(self, root: str | Path, csv: str = "labels.csv", layout: Any = "coco17",
                 coord_dims: int | None = None, normalize: str = "auto",
                 class_names: Sequence[str] | None = None, split_name: str = "custom") -> None:
        self.root = Path(root)
        self.csv_path = self.root / csv if not Path(csv).is_absolute() else Path(csv)
        self.layout = layout if isinstance(layout, str) else plain(layout)
        self.num_joints = get_layout(self.layout).num_joints
        self.coord_dims = coord_dims
        self.normalize = normalize
        self.class_names = list(class_names) if class_names is not None else None
        self.split_name = split_name

    def rows(self) -> list[dict[str, str]]:
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"custom data: CSV not found: {self.csv_path}")
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                missing = {"name", "label", "split"} - set(reader.fieldnames or [])
                if missing:
                    raise ValueError(f"{self.csv_path}: missing columns {sorted(missing)} "
                                     f"(need name,label,split)")
                rows = []
                for row in reader:
                    if None in row:  # DictReader files surplus fields under the key None
                        raise SkeletonFormatError(self.csv_path, "more fields than the header",
                                                  reader.line_num)
                    rows.append({k: (v or "").strip() for k, v in row.items()})
                return rows
        except (UnicodeDecodeError, csv.Error) as exc:
            raise SkeletonFormatError(self.csv_path, f"not a readable CSV ({exc})") from None

    def _file(self, name: str) -> Path:
        path = self.root / name
        return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")

    def params(self) -> dict[str, Any]:
        rows = self.rows()
        h = hashlib.sha256(self.csv_path.read_bytes())
        for row in rows:
            p = self._file(row["name"])
            st = p.stat() if p.exists() else None
            h.update(f"{p}:{st.st_size if st else -1}:{int(st.st_mtime) if st else -1}".encode())
        return {"root": str(self.root.resolve()), "layout": self.layout,
                "coord_dims": self.coord_dims, "normalize": self.normalize,
                "class_names": self.class_names, "split_name": self.split_name,
                "content": h.hexdigest()}

    def _labels(self, rows: list[dict[str, str]]) -> tuple[list[int], list[str] | None]:
        raw = [r["label"] for r in rows]

        def is_int(s: str) -> bool:
            try:
                int(s)
                return True
            except ValueError:
                return False

        given = [s for s in raw if s not in ("", "-1")]
        if all(is_int(s) for s in given):
            bad = [s for s in given if not 0 <= int(s) < MAX_CLASSES]
            if bad:
                raise SkeletonFormatError(self.csv_path, f"labels {bad[:5]} outside 0..{MAX_CLASSES - 1} "
                                                         "(-1 or empty: unlabelled)")
            return [int(s) if s else -1 for s in raw], self.class_names
        names = self.class_names or sorted(set(given))
        lookup = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(given) - set(lookup))
        if unknown:
            raise ValueError(f"{self.csv_path}: labels {unknown[:5]} not in class_names")
        return [lookup[s] if s not in ("", "-1") else -1 for s in raw], names

    def write(self, out_dir: Path, key: str) -> None:
        rows = self.rows()
        if not rows:
            raise ValueError(f"{self.csv_path}: no samples")
        labels, class_names = self._labels(rows)
        writer = None
        parts: dict[str, list[int]] = {}
        try:
            for row, label in zip(rows, labels):
                path = self._file(row["name"])
                x = load_array(path)
                if x.ndim == 3:
                    x = x[None]
                if x.ndim != 4 or x.shape[2] != self.num_joints or 0 in x.shape:
                    raise ValueError(f"{path}: expected (T, {self.num_joints}, C) or "
                                     f"(M, T, {self.num_joints}, C) with T, M, C > 0, got {x.shape}")
                if writer is None:
                    channels = x.shape[-1]
                    cd = self.coord_dims or min(channels, 3)
                    mode = resolve_normalize(self.normalize, cd)
                    writer = StoreWriter(out_dir, self.layout, channels, class_names=class_names,
                                         source=key, coord_dims=cd)
                elif x.shape[-1] != writer.channels:
                    raise ValueError(f"{path}: {x.shape[-1]} channels, earlier files have "
                                     f"{writer.channels}")
                x = normalize_sample(x, self.layout, mode, cd)
                i = writer.add(row["name"], x, label)
                parts.setdefault(row["split"] or "train", []).append(i)
            for part, idx in parts.items():
                writer.set_split(self.split_name, part, idx)
            writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
