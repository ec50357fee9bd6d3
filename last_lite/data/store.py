"""An on-disk skeleton store: flat float32 frames plus small index arrays (numpy only, no pickle).

Layout of a store directory::

    frames.npy    (R, V, C) float32; sample i is rows offsets[i] : offsets[i] + persons[i] * lengths[i]
                  laid out as (persons[i], lengths[i], V, C)
    offsets.npy   (N,) int64
    lengths.npy   (N,) int64   frames per sample
    persons.npy   (N,) int64   persons per sample
    labels.npy    (N,) int64   -1 = unlabelled
    meta.json     format version, layout, channels, coord_dims, class_names, names, per-sample
                  fields, splits, source, nonfinite (indices of samples holding NaN/inf),
                  index_sha256 (checksum of the index arrays, names and labels)

:class:`StoreWriter` appends frames to a raw file as samples arrive (bounded memory), builds the
whole store in a temporary directory beside the target and renames it into place on ``close()``;
an exception inside its ``with`` block leaves no partial directory behind.

:class:`SkeletonStore` reads it with ``np.load(mmap_mode="r", allow_pickle=False)``; the frame
memmap is opened lazily in each process, so several DataLoader workers can share one store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import uuid
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

FORMAT_VERSION = 1
INDEX_FILES = ("offsets", "lengths", "persons", "labels")
# Importers refuse larger labels as corrupt (default class names are built up to the largest).
MAX_CLASSES = 100_000
_HEADER_BYTES = 128  # reserved .npy header for frames.npy (shape written at close)


class StoreError(RuntimeError):
    """A store directory is missing, incomplete or corrupt."""


def map_npy(path: str | os.PathLike) -> np.ndarray:
    """``np.load(path, mmap_mode="r", allow_pickle=False)`` of an untrusted ``.npy``, bounded in
    memory: the header length is checked first (numpy reads a declared header length before it
    checks it, and a corrupt one can ask for gigabytes) and the data is mapped, not read, so a
    header declaring a huge shape costs nothing (numpy refuses a map longer than the file)."""
    from last_lite.io import open_regular

    with open_regular(path) as f:  # a FIFO, a dangling symlink or a loop: OSError, never a hang
        head = f.read(12)
    if head[:6] == b"\x93NUMPY" and len(head) >= 10:
        if head[6] == 1:
            length = struct.unpack("<H", head[8:10])[0]
        else:
            length = struct.unpack("<I", head[8:12].ljust(4, b"\0"))[0]
        if length > 1 << 16 or length > os.path.getsize(path):
            raise ValueError(f"{path}: .npy header length {length} is corrupt")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _index_checksum(offsets: np.ndarray, lengths: np.ndarray, persons: np.ndarray,
                    labels: np.ndarray, names: Iterable[str]) -> str:
    h = hashlib.sha256()
    for arr in (offsets, lengths, persons, labels):
        h.update(np.ascontiguousarray(arr, dtype="<i8").tobytes())
    h.update("\n".join(names).encode("utf-8"))
    return h.hexdigest()


def _npy_header(shape: tuple[int, ...], total: int = _HEADER_BYTES) -> bytes:
    """A version-1.0 .npy header for little-endian float32 of ``shape``, padded to ``total`` bytes."""
    d = "{'descr': '<f4', 'fortran_order': False, 'shape': (%s), }" % (
        "".join(f"{int(s)}, " for s in shape).rstrip(" ") if len(shape) != 1 else f"{int(shape[0])},")
    prefix = b"\x93NUMPY\x01\x00"
    body_len = total - len(prefix) - 2
    body = d.encode("latin1")
    if len(body) + 1 > body_len:
        raise ValueError(f"shape {shape} too large for the reserved header")
    body = body + b" " * (body_len - len(body) - 1) + b"\n"
    return prefix + struct.pack("<H", body_len) + body


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_jsonable(v) for v in value]
    return value


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False
    where that is unavailable (other systems, old kernels, filesystems without it)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return rc == 0


def recover_store(dst: Path) -> bool:
    """Where a writer was killed between the two renames that replace a store (``dst`` moved
    to ``.<name>.old-<host>-<pid>-<random>``, the new one not yet in place), move the old store
    back. Only when ``dst`` is absent and that writer is dead. Returns whether it did."""
    from last_lite.io import dead_writer

    dst = Path(dst)
    if dst.exists() or not dst.parent.is_dir():
        return False
    prefix = f".{dst.name}.old-"
    for entry in sorted(dst.parent.iterdir()):
        if not entry.name.startswith(prefix):
            continue
        tag = entry.name[len(prefix):].split("-")
        if len(tag) != 3 or not tag[1].isdigit() or not dead_writer(tag[0], tag[1]):
            continue
        if (entry / "meta.json").is_file():
            try:
                os.rename(entry, dst)
                return True
            except OSError:
                return False
    return False


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished directory ``src`` to ``dst``, replacing an existing one.

    Where the system can, the two folders are exchanged in one atomic step (``dst`` is always a
    whole store, old or new). Elsewhere ``dst`` is renamed to ``.<name>.old-<writer>-<random>``
    first; a kill between the two renames leaves it there, and the next open or write of the store
    moves it back (:func:`recover_store`)."""
    from last_lite.io import writer_tag

    if dst.is_dir() and not dst.is_symlink() and _rename_exchange(src, dst):
        shutil.rmtree(src, ignore_errors=True)  # now the old store
        return
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{writer_tag()}-{uuid.uuid4().hex[:8]}")
        os.rename(dst, old)
    try:
        os.rename(src, dst)
    except OSError:
        if old is not None and not dst.exists():
            os.rename(old, dst)
            old = None
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


class StoreWriter:
    """Write a :class:`SkeletonStore` sample by sample; use as a context manager.

    ``layout`` is a layout name or a custom mapping ``{edges, num_joints?, center?}``;
    ``coord_dims`` (default ``min(channels, 3)``) says how many leading channels are coordinates
    (2 for 2D keypoints with a score channel).
    """

    def __init__(self, out_dir: str | os.PathLike, layout: str | Mapping, channels: int,
                 class_names: list[str] | None = None, source: str = "",
                 coord_dims: int | None = None, prenormalize: str | None = None) -> None:
        from last_lite.skeleton import get_layout

        self.out_dir = Path(out_dir)
        self.layout = layout if isinstance(layout, str) else _jsonable(dict(layout))
        self.num_joints = get_layout(layout).num_joints
        self.channels = int(channels)
        self.coord_dims = int(coord_dims) if coord_dims is not None else min(self.channels, 3)
        if not 1 <= self.coord_dims <= self.channels:
            raise ValueError(f"coord_dims {self.coord_dims} must be in 1..channels ({self.channels})")
        self.class_names = list(class_names) if class_names is not None else None
        self.source = source
        if prenormalize not in (None, "3d", "2d", "none"):
            raise ValueError(f"prenormalize must be 3d, 2d, none or None, got {prenormalize!r}")
        self.prenormalize = prenormalize
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        from last_lite.io import clean_stale_temps, writer_tag

        recover_store(self.out_dir)  # a replacement killed half-way: the old store back first
        clean_stale_temps(self.out_dir)  # temp folders of killed writers of this store
        self.tmp_dir = self.out_dir.parent / (f".{self.out_dir.name}.tmp-{writer_tag()}-"
                                              f"{uuid.uuid4().hex[:8]}")
        self.tmp_dir.mkdir()
        self._frames_path = self.tmp_dir / "frames.npy"
        self._fh = open(self._frames_path, "wb")
        self._fh.write(_npy_header((0, self.num_joints, self.channels)))
        self._rows = 0
        self._offsets: list[int] = []
        self._lengths: list[int] = []
        self._persons: list[int] = []
        self._labels: list[int] = []
        self._names: list[str] = []
        self._name_set: set[str] = set()
        self._fields: dict[str, list[Any]] = {}
        self._splits: dict[str, dict[str, list[int]]] = {}
        self._nonfinite: list[int] = []
        self._closed = False
        self.path: Path | None = None

    def __len__(self) -> int:
        return len(self._names)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()

    def add(self, name: str, keypoints: np.ndarray, label: int, **fields: Any) -> int:
        """Append one sample (M, T, V, C); returns its index. ``fields``: e.g. subject=1, view=3."""
        if self._closed:
            raise RuntimeError("StoreWriter is closed")
        name = str(name)
        if name in self._name_set:
            raise ValueError(f"duplicate sample name {name!r}")
        kp = np.asarray(keypoints)
        if kp.ndim != 4:
            raise ValueError(f"sample {name!r}: keypoints must be (M, T, V, C), got shape {kp.shape}")
        m, t, v, c = kp.shape
        if v != self.num_joints or c != self.channels:
            raise ValueError(f"sample {name!r}: expected V={self.num_joints}, C={self.channels}, "
                             f"got shape {kp.shape}")
        if m < 1 or t < 1:
            raise ValueError(f"sample {name!r}: needs at least one person and one frame, got {kp.shape}")
        kp = np.ascontiguousarray(kp, dtype="<f4")
        index = len(self._names)
        if not np.isfinite(kp).all():
            self._nonfinite.append(index)
        self._fh.write(kp.tobytes())
        self._offsets.append(self._rows)
        self._rows += m * t
        self._lengths.append(t)
        self._persons.append(m)
        self._labels.append(int(label))
        self._names.append(name)
        self._name_set.add(name)
        for key, value in fields.items():
            col = self._fields.setdefault(key, [None] * index)
            col.append(_jsonable(value))
        for col in self._fields.values():
            if len(col) < index + 1:
                col.append(None)
        return index

    def set_split(self, name: str, part: str, indices: Iterable[int]) -> None:
        """Record a split part, e.g. ``set_split("xsub", "train", [...])``."""
        idx = [int(i) for i in indices]
        n = len(self._names)
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise ValueError(f"split {name}/{part}: indices out of range 0..{n - 1}: {bad[:5]}")
        self._splits.setdefault(str(name), {})[str(part)] = idx

    def abort(self) -> None:
        """Discard everything written so far (no directory is left behind)."""
        if not self._fh.closed:
            self._fh.close()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self._closed = True

    def close(self) -> Path:
        """Finish the files, write meta.json and rename the store into place; returns its path."""
        from last_lite.io import fsync_dir

        if self._closed:
            if self.path is None:
                raise RuntimeError("StoreWriter was aborted")
            return self.path
        try:
            self._fh.flush()
            self._fh.seek(0)
            self._fh.write(_npy_header((self._rows, self.num_joints, self.channels)))
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            arrays = {
                "offsets": np.asarray(self._offsets, dtype=np.int64),
                "lengths": np.asarray(self._lengths, dtype=np.int64),
                "persons": np.asarray(self._persons, dtype=np.int64),
                "labels": np.asarray(self._labels, dtype=np.int64),
            }
            for key, arr in arrays.items():
                with open(self.tmp_dir / f"{key}.npy", "wb") as tmp_file:
                    np.save(tmp_file, arr, allow_pickle=False)
                    tmp_file.flush()
                    os.fsync(tmp_file.fileno())
            labelled = arrays["labels"][arrays["labels"] >= 0]
            class_names = self.class_names
            if class_names is None and labelled.size:
                class_names = [str(i) for i in range(int(labelled.max()) + 1)]
            if class_names is not None and labelled.size and labelled.max() >= len(class_names):
                raise ValueError(f"label {int(labelled.max())} out of range for "
                                 f"{len(class_names)} class names")
            meta = {
                "format_version": FORMAT_VERSION,
                "layout": self.layout,
                "num_joints": self.num_joints,
                "channels": self.channels,
                "coord_dims": self.coord_dims,
                "class_names": class_names or [],
                "num_samples": len(self._names),
                "num_rows": self._rows,
                "source": self.source,
                "prenormalize": self.prenormalize,
                "names": self._names,
                "fields": self._fields,
                "splits": self._splits,
                "nonfinite": self._nonfinite,
                "index_sha256": _index_checksum(*arrays.values(), self._names),
            }
            with open(self.tmp_dir / "meta.json", "w", encoding="utf-8") as f:
                json.dump(meta, f)
                f.flush()
                os.fsync(f.fileno())
            # the folder's entries before the swap, the swap itself after: a crash then finds
            # the old store or the whole new one, never a folder missing files
            fsync_dir(self.tmp_dir)
            _replace_dir(self.tmp_dir, self.out_dir)
            fsync_dir(self.out_dir.parent)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self.path = self.out_dir
        return self.out_dir


class SkeletonStore:
    """Read-only access to a store written by :class:`StoreWriter`."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        if not self.root.exists():
            recover_store(self.root)
        if not meta_path.is_file():
            raise StoreError(f"no skeleton store at {self.root} (meta.json missing)")
        try:
            self._open(meta_path)
        except StoreError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                RecursionError) as err:  # malformed metadata of the right JSON syntax
            raise StoreError(f"corrupt skeleton store at {self.root}: {type(err).__name__}: "
                             f"{str(err)[:200]}") from err

    def _open(self, meta_path: Path) -> None:
        try:
            with open(meta_path, encoding="utf-8") as f:
                self.meta: dict = json.load(f)
            # mapped first: a corrupt header declaring a huge shape must not allocate it
            arrays = {k: map_npy(self.root / f"{k}.npy") for k in INDEX_FILES}
        except MemoryError:
            raise
        except Exception as err:  # numpy and json raise many types for a damaged file
            raise StoreError(f"corrupt skeleton store at {self.root}: {type(err).__name__}: {err}") from err
        if not isinstance(self.meta, dict):
            raise StoreError(f"corrupt skeleton store at {self.root}: meta.json is not an object")
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"skeleton store at {self.root} has format version "
                             f"{self.meta.get('format_version')}, expected {FORMAT_VERSION}")
        self.offsets = arrays["offsets"].astype(np.int64)
        self.lengths = arrays["lengths"].astype(np.int64)
        self.persons = arrays["persons"].astype(np.int64)
        self.labels = arrays["labels"].astype(np.int64)
        self.names: list[str] = list(self.meta.get("names", []))
        n = len(self.names)
        if not all(a.ndim == 1 and len(a) == n for a in arrays.values()):
            raise StoreError(f"corrupt skeleton store at {self.root}: index arrays and names disagree")
        checksum = _index_checksum(self.offsets, self.lengths, self.persons, self.labels, self.names)
        if checksum != self.meta.get("index_sha256"):
            raise StoreError(f"corrupt skeleton store at {self.root}: index checksum mismatch")
        self.index_checksum: str = checksum
        rows = int(self.meta.get("num_rows", -1))
        expected = int((self.persons * self.lengths).sum())
        sizes = self.persons * self.lengths
        if (rows != expected or (self.persons < 1).any() or (self.lengths < 1).any()
                or not np.array_equal(self.offsets, np.cumsum(sizes) - sizes)):
            raise StoreError(f"corrupt skeleton store at {self.root}: offsets do not add up")
        try:  # header check only (cheap): shape and dtype
            frames = map_npy(self.root / "frames.npy")
        except MemoryError:
            raise
        except Exception as err:  # numpy raises many types for a damaged header
            raise StoreError(f"corrupt skeleton store at {self.root}: frames.npy: "
                             f"{type(err).__name__}: {err}") from err
        want = (rows, int(self.meta["num_joints"]), int(self.meta["channels"]))
        if frames.shape != want or frames.dtype != np.float32:
            raise StoreError(f"corrupt skeleton store at {self.root}: frames.npy is "
                             f"{frames.shape} {frames.dtype}, expected {want} float32")
        del frames
        # what the loaders read later: malformed values fail here, naming the store
        if not 1 <= self.coord_dims <= self.channels:
            raise StoreError(f"corrupt skeleton store at {self.root}: coord_dims {self.coord_dims}")
        if not isinstance(self.layout, (str, dict)) or not isinstance(self.source, str):
            raise StoreError(f"corrupt skeleton store at {self.root}: layout or source")
        if not all(isinstance(c, str) for c in self.class_names):
            raise StoreError(f"corrupt skeleton store at {self.root}: class_names")
        parts = [idx for split in self.splits.values() for idx in split.values()]
        for idx in parts + [self.nonfinite]:
            if not all(isinstance(i, int) and 0 <= i < n for i in idx):
                raise StoreError(f"corrupt skeleton store at {self.root}: sample indices out of range")
        self._frames = None
        self._pid = None

    # -- lazy per-process memmap ------------------------------------------------------------
    @property
    def frames(self) -> np.ndarray:
        pid = os.getpid()
        if self._frames is None or self._pid != pid:
            self._frames = np.load(self.root / "frames.npy", mmap_mode="r", allow_pickle=False)
            self._pid = pid
        return self._frames

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_frames"] = None
        state["_pid"] = None
        return state

    # -- access -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return (f"SkeletonStore({str(self.root)!r}, samples={len(self)}, layout={self.layout!r}, "
                f"channels={self.channels})")

    def get(self, i: int) -> np.ndarray:
        """Sample ``i`` as a fresh (M_i, T_i, V, C) float32 array."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for a store of {n}")
        i = int(i) % n
        o, m, t = int(self.offsets[i]), int(self.persons[i]), int(self.lengths[i])
        rows = np.array(self.frames[o:o + m * t], dtype=np.float32)
        return rows.reshape(m, t, rows.shape[1], rows.shape[2])

    def __getitem__(self, i: int) -> np.ndarray:
        return self.get(i)

    @property
    def layout(self) -> str | dict:
        return self.meta["layout"]

    @property
    def num_joints(self) -> int:
        return int(self.meta["num_joints"])

    @property
    def channels(self) -> int:
        return int(self.meta["channels"])

    @property
    def coord_dims(self) -> int:
        return int(self.meta.get("coord_dims", min(self.channels, 3)))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    @property
    def num_classes(self) -> int:
        return len(self.meta.get("class_names", []))

    @property
    def source(self) -> str:
        return str(self.meta.get("source", ""))

    @property
    def prenormalize(self) -> str | None:
        """What the source applied to every sample before storing it (``3d``, ``2d`` or
        ``none``: the runtime repeats it); None for stores written before it was recorded."""
        return self.meta.get("prenormalize")

    @property
    def splits(self) -> dict[str, dict[str, list[int]]]:
        return self.meta.get("splits", {})

    @property
    def nonfinite(self) -> list[int]:
        """Indices of samples holding NaN or inf (recorded at write time)."""
        return [int(i) for i in self.meta.get("nonfinite", [])]

    def field(self, name: str) -> np.ndarray:
        """A per-sample field (e.g. ``"subject"``) as an array aligned with the samples."""
        fields = self.meta.get("fields", {})
        if name not in fields:
            raise KeyError(f"store {self.root} has no field {name!r}; fields: {sorted(fields)}")
        return np.asarray(fields[name])

    def split(self, name: str, part: str) -> np.ndarray:
        """Indices of split ``name``'s ``part`` (e.g. ``split("xsub", "train")``)."""
        splits = self.splits
        if name not in splits:
            raise KeyError(f"store {self.root} has no split {name!r}; splits: {sorted(splits)}")
        if part not in splits[name]:
            raise KeyError(f"split {name!r} of store {self.root} has no part {part!r}; "
                           f"parts: {sorted(splits[name])}")
        return np.asarray(splits[name][part], dtype=np.int64)


def open_store_if_valid(root: str | os.PathLike, source: str | None = None) -> SkeletonStore | None:
    """Open the store at ``root`` if it exists, is intact and (optionally) came from ``source``."""
    try:
        store = SkeletonStore(root)
    except StoreError:
        return None
    if source is not None and store.source != source:
        return None
    return store
