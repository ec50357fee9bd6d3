"""A folder of per-sample ``.npy`` arrays plus a CSV ``name,label,split`` (docs/own_data.md).

Each array is (T, V, C) or (M, T, V, C), loaded with ``allow_pickle=False``. ``name`` is the file
name relative to the folder holding the CSV (``root`` by default; ``.npy`` added when missing).
``label`` is an integer class index (empty or -1 = unlabelled) or a class name, the same kind in
every row; anything else (``1.7``, ``true``) is refused. ``split`` is the part (``train``,
``val``, ``test``, in any case; empty = ``train``; anything else is refused). A clip is one file,
however its name is spelled (``clips/c0``, ``clips/c0.npy``, ``./clips/c0``): it may be listed in
``val`` and ``test`` with the same label, never in ``train`` and another part (that would leak
training clips into the evaluation). The store gets one split, ``split_name`` (default ``custom``).

``layout``: a registered name (``coco17``, ``openpose18``, ``mediapipe33``, ``ntu25``, ...), a
layout file (``layout.yaml``/``.json`` with ``edges``, ``num_joints``, ``center`` or ``centre``,
optional ``name``, ``joint_names``, ``regions``; looked up as given, then under ``root``), or a
mapping of those keys. The graph may have several parts (two arms, no torso).

``class_names``: a list, or a text file (one name per line; relative to ``root``); by default
``root/classes.txt`` when present. They name the classes in metrics, the ONNX metadata and the
runtime's output (integer labels without names show as "0", "1", ...).

``coord_dims``: how many leading channels are coordinates; ``null`` reads it from the data: C=2
is 2D, C=4 is 3D plus a score, C=3 is 2D plus a score when the third channel stays in [0, 1] in
the first files, else 3D (the choice is logged; pass ``coord_dims`` when it is wrong).
``normalize``: ``auto`` (``3d`` when ``coord_dims`` is 3, else ``2d``), ``3d``
(:func:`pre_normalize_3d`), ``2d`` (:func:`normalize_2d`) or ``none``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from last_lite.data.normalize import normalize_2d, pre_normalize_3d
from last_lite.data.ntu_skeleton import SkeletonFormatError
from last_lite.data.sources import Source
from last_lite.data.store import MAX_CLASSES, StoreWriter, map_npy
from last_lite.skeleton import LAYOUTS, get_layout

log = logging.getLogger(__name__)

LAYOUT_KEYS = ("edges", "num_joints", "center", "centre", "name", "joint_names", "regions")
PARTS = ("train", "val", "test")

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


def data_folder_missing(path: Path, what: str) -> FileNotFoundError:
    """The error for a data folder or file that is not there, naming ``$LAST_LITE_DATA``."""
    env = os.environ.get("LAST_LITE_DATA")
    where = (f"$LAST_LITE_DATA is {env}" if env else "$LAST_LITE_DATA is not set, so data folders are "
             "looked up under ./data")
    return FileNotFoundError(f"{what} not found: {path} ({where}). Set LAST_LITE_DATA=<the folder "
                             f"holding your data folders> or data.source.root=<the folder>.")


def _read_structured(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return json.loads(text)
    import yaml

    return yaml.safe_load(text)


def resolve_layout(layout: Any, root: Path) -> str | dict:
    """A layout name, or the plain mapping of a layout file or a config mapping (checked)."""
    if isinstance(layout, str) and layout in LAYOUTS:
        return layout
    if isinstance(layout, (str, os.PathLike)):
        path = Path(layout)
        candidates = [path] if path.is_absolute() else [path, root / path]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ValueError(f"layout {str(layout)!r} is neither a known layout "
                             f"({', '.join(sorted(LAYOUTS))}) nor a layout file (looked for "
                             f"{' and '.join(str(c) for c in candidates)})")
        spec = _read_structured(found)
        if not isinstance(spec, Mapping):
            raise ValueError(f"{found}: a layout file holds a mapping with edges, num_joints, center")
        unknown = sorted(set(spec) - set(LAYOUT_KEYS))
        if unknown:
            raise ValueError(f"{found}: unknown keys {unknown}; a layout file has {list(LAYOUT_KEYS)}")
        spec = {"name": found.stem, **plain(spec)}
        try:
            get_layout(spec)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{found}: {exc}") from None
        return spec
    spec = plain(layout)
    get_layout(spec)
    return spec


def read_class_names(class_names: Any, root: Path) -> list[str] | None:
    """Class names from a list, a text file (one per line) or ``root/classes.txt``; else None."""
    if class_names is None:
        default = root / "classes.txt"
        return read_class_names(str(default), root) if default.is_file() else None
    if isinstance(class_names, (str, os.PathLike)):
        path = Path(class_names)
        path = path if path.is_absolute() or path.is_file() else root / path
        if not path.is_file():
            raise FileNotFoundError(f"class names file not found: {path} (one class name per line)")
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
        names = [n for n in names if n]
    else:
        names = [str(n) for n in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    return names


_INT = re.compile(r"[+-]?\d+")


def label_kind(text: str) -> str:
    """``none`` (empty or -1), ``index`` (an integer), ``name``, or ``bad`` (a number that is not
    an integer, or a boolean: never read as a class)."""
    if text in ("", "-1"):
        return "none"
    if _INT.fullmatch(text):
        return "index"
    try:
        float(text)
        return "bad"
    except ValueError:
        pass
    return "bad" if text.lower() in ("true", "false") else "name"


def infer_coord_dims(samples: Sequence[np.ndarray]) -> tuple[int, str]:
    """(coordinate channels, why) from the first samples' channel count and values."""
    channels = samples[0].shape[-1]
    if channels == 2:
        return 2, "2 channels: x, y"
    if channels == 4:
        return 3, "4 channels: x, y, z, score"
    if channels == 3:
        third = np.concatenate([s[..., 2].ravel() for s in samples])
        third = third[np.isfinite(third)]
        if third.size and third.min() >= 0 and third.max() <= 1:
            return 2, "3 channels whose third stays in [0, 1]: x, y, score"
        return 3, "3 channels whose third leaves [0, 1]: x, y, z"
    return min(channels, 3), f"{channels} channels"


class CustomSource(Source):
    name = "custom"
    version = 3

    def __init__(self, root: str | Path, csv: str = "labels.csv", layout: Any = "coco17",
                 coord_dims: int | None = None, normalize: str = "auto",
                 class_names: Sequence[str] | str | None = None, split_name: str = "custom") -> None:
        self.root = Path(root)
        self.csv_path = self.root / csv if not Path(csv).is_absolute() else Path(csv)
        self._layout_arg = layout
        self._layout: str | dict | None = None
        self.coord_dims = None if coord_dims is None else int(coord_dims)
        self.normalize = normalize
        self._class_names_arg = class_names
        self.split_name = split_name

    # resolved on first use (a layout or class names file is read when the data is built)
    @property
    def layout(self) -> str | dict:
        if self._layout is None:
            self._layout = resolve_layout(self._layout_arg, self.root)
        return self._layout

    @property
    def num_joints(self) -> int:
        return get_layout(self.layout).num_joints

    @property
    def class_names(self) -> list[str] | None:
        if not hasattr(self, "_class_names"):
            self._class_names = read_class_names(self._class_names_arg, self.root)
        return self._class_names

    def rows(self) -> list[dict[str, str]]:
        if not self.root.is_dir():
            raise data_folder_missing(self.root, "custom data folder")
        if not self.csv_path.is_file():
            raise FileNotFoundError(f"custom data: {self.csv_path} not found: the folder needs a CSV "
                                    f"with the columns name,label,split (docs/own_data.md)")
        try:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                reader.fieldnames = [h.strip() for h in header]  # "name, label, split" is fine
                missing = {"name", "label", "split"} - set(reader.fieldnames)
                if missing:
                    joined = ",".join(header)
                    hint = ("; the file must be comma-separated (this header holds a "
                            f"{'semicolon' if ';' in joined else 'tab'})"
                            if ";" in joined or "\t" in joined else "")
                    raise ValueError(f"{self.csv_path}: missing columns {sorted(missing)} "
                                     f"(need name,label,split{hint})")
                rows = []
                for row in reader:
                    if None in row:  # DictReader files surplus fields under the key None
                        raise SkeletonFormatError(self.csv_path, "more fields than the header",
                                                  reader.line_num)
                    rows.append({**{k: (v or "").strip() for k, v in row.items()},
                                 "line": str(reader.line_num)})
                return rows
        except (UnicodeDecodeError, csv.Error) as exc:
            raise SkeletonFormatError(self.csv_path, f"not a readable CSV ({exc})") from None

    def _file(self, name: str) -> Path:
        """Names are relative to the folder holding the CSV (``root`` by default), then ``root``."""
        def with_npy(path: Path) -> Path:
            return path if path.suffix == ".npy" else path.with_name(path.name + ".npy")

        path = with_npy(self.csv_path.parent / name)
        if not path.exists() and self.csv_path.parent != self.root and with_npy(self.root / name).exists():
            return with_npy(self.root / name)
        return path

    def params(self) -> dict[str, Any]:
        rows = self.rows()
        h = hashlib.sha256(self.csv_path.read_bytes())
        for row in rows:
            p = self._file(row["name"])
            st = p.stat() if p.exists() else None
            # nanoseconds and inode: a same-size clip rewritten within a second is still seen
            stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}" if st else "missing"
            h.update(f"{p}:{stamp}".encode())
        return {"root": str(self.root.resolve()), "layout": self.layout,
                "coord_dims": self.coord_dims, "normalize": self.normalize,
                "class_names": self.class_names, "split_name": self.split_name,
                "content": h.hexdigest()}

    def _labels(self, rows: list[dict[str, str]]) -> tuple[list[int], list[str] | None]:
        kinds = [label_kind(r["label"]) for r in rows]
        bad = [r for r, k in zip(rows, kinds) if k == "bad"]
        if bad:
            shown = ", ".join(f"line {r['line']}: {r['label']!r}" for r in bad[:5])
            raise ValueError(f"{self.csv_path}: a label is an integer class index (0, 1, ...; empty or "
                             f"-1: unlabelled) or a class name, not a number with a fraction or a "
                             f"boolean ({shown})")
        if "index" in kinds and "name" in kinds:
            row = rows[kinds.index("name")]
            raise ValueError(f"{self.csv_path}: labels mix class indices and class names (line "
                             f"{rows[kinds.index('index')]['line']}: {rows[kinds.index('index')]['label']!r}, "
                             f"line {row['line']}: {row['label']!r}); use one kind in every row")
        if "name" not in kinds:
            given = [int(r["label"]) for r, k in zip(rows, kinds) if k == "index"]
            limit = len(self.class_names) if self.class_names else MAX_CLASSES
            wrong = sorted({g for g in given if not 0 <= g < limit})
            if wrong:
                names = f"the {limit} class names" if self.class_names else f"0..{MAX_CLASSES - 1}"
                raise SkeletonFormatError(self.csv_path, f"labels {wrong[:5]} outside {names} "
                                                         "(-1 or empty: unlabelled)")
            if self.class_names is None and given:
                log.warning("custom data: integer labels and no class names, so classes show as "
                            "'0'..'%d' (in metrics, the ONNX file and the runtime); name them with "
                            "%s/classes.txt (one per line) or data.source.class_names=[...]",
                            max(given), self.root)
            return [int(r["label"]) if k == "index" else -1 for r, k in zip(rows, kinds)], self.class_names
        given = [r["label"] for r, k in zip(rows, kinds) if k == "name"]
        names = self.class_names or sorted(set(given))
        lookup = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(given) - set(lookup))
        if unknown:
            raise ValueError(f"{self.csv_path}: labels {unknown[:5]} not in the class names "
                             f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
        return [lookup[r["label"]] if k == "name" else -1 for r, k in zip(rows, kinds)], names

    def _part(self, row: dict[str, str]) -> str:
        part = row["split"].strip().lower() or "train"
        if part not in PARTS:
            raise ValueError(f"{self.csv_path}, line {row['line']}: split {row['split']!r} is not "
                             f"train, val or test (empty: train); fix the row")
        return part

    def _key(self, row: dict[str, str]) -> Path:
        """The file a name stands for, so that two spellings of one clip are one sample."""
        try:
            return self._file(row["name"]).resolve()
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a symlink loop
            raise ValueError(f"{self.csv_path}, line {row['line']}: name {row['name']!r} is not a "
                             f"usable file name ({exc})") from None

    def _samples(self, rows: list[dict[str, str]], labels: list[int]) -> dict[str, tuple[int, list[str]]]:
        """name -> (label, parts), keyed on the file (the first spelling of its name is kept): a
        clip may be listed in val and test with one label, not in train and another part."""
        samples: dict[str, tuple[int, list[str]]] = {}
        first: dict[Path, tuple[str, str]] = {}  # file -> (name as first listed, its line)
        for row, label in zip(rows, labels):
            part = self._part(row)
            name, line = first.setdefault(self._key(row), (row["name"], row["line"]))
            if name not in samples:
                samples[name] = (label, [part])
                continue
            known, parts = samples[name]
            what = (f"{name!r} (first listed on line {line})" if row["name"] == name else
                    f"{row['name']!r} (the file of {name!r}, line {line})")
            where = f"{self.csv_path}, line {row['line']}"
            if known != label:
                raise ValueError(f"{where}: {what} is listed again with another label")
            if part in parts:
                raise ValueError(f"{where}: {what} is listed twice in split {part!r}")
            if "train" in (part, *parts):
                raise ValueError(f"{where}: {what} is listed in {parts[0]!r} and {part!r}: a "
                                 f"training clip must not be in val or test (it would leak into "
                                 f"the evaluation); keep one of the rows")
            parts.append(part)
        return samples

    def _load(self, name: str, line: str) -> np.ndarray:
        path = self._file(name)
        if not path.exists():
            raise FileNotFoundError(f"{self.csv_path}, line {line}: {path} not found (names are "
                                    f"relative to {self.csv_path.parent}, the folder holding the CSV)")
        x = load_array(path)
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[2] != self.num_joints or 0 in x.shape:
            raise ValueError(f"{path}: expected (T, {self.num_joints}, C) or "
                             f"(M, T, {self.num_joints}, C) with T, M, C > 0 (the layout has "
                             f"{self.num_joints} joints), got {x.shape}")
        return x

    def write(self, out_dir: Path, key: str) -> None:
        rows = self.rows()
        if not rows:
            raise ValueError(f"{self.csv_path}: no samples")
        labels, class_names = self._labels(rows)
        samples = self._samples(rows, labels)
        lines = {}
        for row in rows:
            lines.setdefault(row["name"], row["line"])
        cd = self.coord_dims
        if cd is None:
            first = [self._load(n, lines[n]) for n in list(samples)[:32]]
            cd, why = infer_coord_dims(first)
            log.info("custom data: coord_dims=%d read from the data (%s); set data.source.coord_dims "
                     "if that is wrong", cd, why)
        mode = resolve_normalize(self.normalize, cd)
        writer = None
        parts: dict[str, list[int]] = {}
        try:
            for name, (label, sample_parts) in samples.items():
                x = self._load(name, lines[name])
                if writer is None:
                    writer = StoreWriter(out_dir, self.layout, x.shape[-1], class_names=class_names,
                                         source=key, coord_dims=cd, prenormalize=mode)
                elif x.shape[-1] != writer.channels:
                    raise ValueError(f"{self._file(name)}: {x.shape[-1]} channels, earlier files "
                                     f"have {writer.channels}")
                x = normalize_sample(x, self.layout, mode, cd)
                i = writer.add(name, x, label)
                for part in sample_parts:
                    parts.setdefault(part, []).append(i)
            for part, idx in parts.items():
                writer.set_split(self.split_name, part, idx)
            writer.close()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
