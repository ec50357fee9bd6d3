"""CTR-GCN's preprocessed NTU arrays (``NTU60_CS.npz``, ``NTU120_CSub.npz``, ...).

The npz holds ``x_train`` (N, T, 150) = (T, 2 persons x 25 joints x 3), one-hot ``y_train``
(N, classes), ``x_test`` and ``y_test``; sequences are zero-padded to T (300) frames. It is read
with ``allow_pickle=False``, streamed in chunks (a full NTU-60 ``x_train`` is about 7 GB), trailing
all-zero frames are trimmed to each sample's true length and an absent second person dropped.
The data is already normalised by CTR-GCN's ``seq_transformation`` (``normalize='none'``).
The store gets split ``benchmark`` (e.g. ``xsub``) with parts ``train`` and ``test``.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from last_lite.data.normalize import pre_normalize_3d
from last_lite.data.ntu_skeleton import SkeletonFormatError
from last_lite.data.sources import Source
from last_lite.data.store import MAX_CLASSES, StoreWriter


def iter_npz_rows(path: str | Path, key: str, chunk: int = 256) -> Iterator[np.ndarray]:
    """Yield blocks of up to ``chunk`` rows of array ``key`` of an npz without loading it whole."""
    try:
        yield from _npz_rows(path, key, chunk)
    except OSError as exc:  # e.g. a corrupt member offset: a seek before the file's start
        raise ValueError(f"{path}:{key}: cannot read ({exc})") from exc


# Bounds checked on a member's header before any of its data is read: deflate expands at most
# 1032:1, so a member's declared size (``file_size`` in the zip directory, which a damaged or
# hostile archive can set freely) beyond that is refused; one row is at most 64 MiB (a CTR-GCN
# row is 180 KB) and rows are read in blocks of at most 16 MiB.
_DEFLATE_RATIO = 1032
MAX_ROW_BYTES = 64 << 20
_BLOCK_BYTES = 16 << 20


def npz_member_header(zf: zipfile.ZipFile, path: str | Path, key: str) -> tuple[tuple, bool, np.dtype]:
    """(shape, fortran_order, dtype) of array ``key`` of an open npz, checked against what the
    archive can hold (sizes in the zip directory, the deflate ratio, the row bound)."""
    member = f"{key}.npy"
    if member not in zf.namelist():
        raise KeyError(f"{path}: no array {key!r} (has {sorted(zf.namelist())})")
    info = zf.getinfo(member)
    archive = Path(path).stat().st_size
    if info.compress_size > archive or (info.compress_type == zipfile.ZIP_STORED
                                        and info.file_size != info.compress_size) \
            or info.file_size > info.compress_size * _DEFLATE_RATIO + 4096:
        raise ValueError(f"{path}:{key}: member sizes {info.file_size} / {info.compress_size} bytes "
                         f"are impossible for a {archive}-byte archive (corrupt)")
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        data_bytes = info.file_size - f.tell()
    if dtype.hasobject:
        raise ValueError(f"{path}:{key} holds Python objects; refusing (allow_pickle=False)")
    if not shape:
        raise ValueError(f"{path}:{key} is a scalar, expected rows")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > data_bytes:
        raise ValueError(f"{path}:{key} declares shape {shape} but holds fewer bytes "
                         "(truncated or corrupt)")
    row = int(np.prod(shape[1:], dtype=object)) * dtype.itemsize
    if row > MAX_ROW_BYTES:
        raise ValueError(f"{path}:{key} declares rows of {row} bytes (shape {shape}); "
                         f"at most {MAX_ROW_BYTES} are read")
    if fortran and declared > MAX_ROW_BYTES:
        raise ValueError(f"{path}:{key} is a Fortran-order array of {declared} bytes; save it in C "
                         "order (np.ascontiguousarray) to be streamed")
    return tuple(shape), bool(fortran), dtype


def _npz_rows(path: str | Path, key: str, chunk: int) -> Iterator[np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        shape, fortran, dtype = npz_member_header(zf, path, key)
        member = f"{key}.npy"
        if fortran:  # small (checked above)
            arr = np.load(path, allow_pickle=False)[key]
            for s in range(0, len(arr), chunk):
                yield np.ascontiguousarray(arr[s:s + chunk])
            return
        row = int(np.prod(shape[1:], dtype=object)) * dtype.itemsize
        chunk = max(1, min(int(chunk), _BLOCK_BYTES // max(row, 1)))
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)  # past the header (checked above)
            (np.lib.format.read_array_header_1_0 if version == (1, 0)
             else np.lib.format.read_array_header_2_0)(f)
            for s in range(0, shape[0], chunk):
                n = min(chunk, shape[0] - s)
                buf = f.read(n * row)
                if len(buf) != n * row:
                    raise ValueError(f"{path}:{key} is truncated")
                yield np.frombuffer(buf, dtype=dtype).reshape((n,) + tuple(shape[1:]))


def check_npz_headers(path: str | Path) -> dict[str, tuple]:
    """The four members' headers, checked together before any data is read: ``x_<part>`` rows of
    150 values (or (T, 150)), ``y_<part>`` labels (N,) or one-hot (N, classes <= MAX_CLASSES), as
    many labels as sequences. Returns ``{key: shape}``."""
    shapes = {}
    with zipfile.ZipFile(path) as zf:
        for key in ("x_train", "y_train", "x_test", "y_test"):
            shapes[key] = npz_member_header(zf, path, key)[0]
    for part in ("train", "test"):
        x, y = shapes[f"x_{part}"], shapes[f"y_{part}"]
        if len(x) not in (2, 3) or x[-1] != 150:
            raise ValueError(f"{path}: x_{part} has shape {x}, expected (N, T, 150) "
                             "(2 persons x 25 joints x 3)")
        if len(y) not in (1, 2) or (len(y) == 2 and not 0 < y[1] <= MAX_CLASSES):
            raise ValueError(f"{path}: y_{part} has shape {y}, expected (N,) or (N, classes)")
        if x[0] != y[0]:
            raise ValueError(f"{path}: x_{part} has {x[0]} rows, y_{part} {y[0]}")
    return shapes


def row_to_sample(row: np.ndarray, persons: int = 2, joints: int = 25) -> np.ndarray:
    """(T, persons*joints*3) -> (M, T', V, 3): trailing zero frames and absent persons dropped."""
    t = row.shape[0]
    x = row.reshape(t, persons, joints, 3).transpose(1, 0, 2, 3)
    nonzero = np.flatnonzero((x != 0).any(axis=(0, 2, 3)))
    x = x[:, : (nonzero[-1] + 1 if nonzero.size else 1)]
    present = (x != 0).any(axis=(1, 2, 3))
    present[0] = True
    return np.ascontiguousarray(x[present], dtype=np.float32)


class CTRGCNSource(Source):
    name = "ctrgcn"
    version = 1

    def __init__(self, path: str | Path, benchmark: str = "xsub", normalize: str = "none",
                 class_names: Sequence[str] | None = None, chunk: int = 256) -> None:
        self.path = Path(path)
        self.benchmark = benchmark
        self.normalize = normalize
        self.class_names = list(class_names) if class_names is not None else None
        self.chunk = int(chunk)

    def params(self) -> dict[str, Any]:
        if not self.path.is_file():
            raise FileNotFoundError(f"CTR-GCN npz not found: {self.path}")
        st = self.path.stat()
        # nanoseconds and inode: a same-size file rewritten within a second is still seen
        return {"path": str(self.path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "inode": st.st_ino, "benchmark": self.benchmark, "normalize": self.normalize,
                "class_names": self.class_names}

    def write(self, out_dir: Path, key: str) -> None:
        try:
            self._write(out_dir, key)
        except SkeletonFormatError:
            raise
        except (ValueError, KeyError, IndexError, TypeError, EOFError, OverflowError,
                NotImplementedError, zipfile.BadZipFile, zlib.error) as exc:
            raise SkeletonFormatError(self.path, f"not a readable CTR-GCN npz ({type(exc).__name__}: "
                                                 f"{str(exc)[:200]})") from None

    def _one_hot_labels(self, block: np.ndarray, part: str, start: int) -> np.ndarray:
        """Labels of one-hot rows; argmax alone would read an all-zero or multi-hot row as 0."""
        ok = ((block == 0) | (block == 1)).all(axis=1) & ((block == 1).sum(axis=1) == 1)
        if not ok.all():
            rows = (np.flatnonzero(~ok) + start).tolist()
            raise SkeletonFormatError(self.path, f"y_{part} rows {rows[:10]}"
                                                 f"{' ...' if len(rows) > 10 else ''} are not "
                                                 f"one-hot (exactly one 1, the rest 0); fix or drop "
                                                 f"those samples")
        return block.argmax(1)

    def _write(self, out_dir: Path, key: str) -> None:
        try:  # every member's header first: nothing is read before all four are plausible
            check_npz_headers(self.path)
        except OSError as exc:
            raise ValueError(f"cannot read ({exc})") from exc
        ys = {}
        for part in ("train", "test"):  # streamed like x; kept as labels (one-hot rows dropped)
            blocks, start = [], 0
            for b in iter_npz_rows(self.path, f"y_{part}", self.chunk):
                blocks.append(self._one_hot_labels(b, part, start) if b.ndim == 2
                              else b.astype(np.int64))
                start += len(b)
            ys[part] = np.concatenate(blocks) if blocks else np.zeros(0, np.int64)
        n_cls = int(max(y.max() for y in ys.values())) + 1
        if not 0 < n_cls <= MAX_CLASSES:
            raise ValueError(f"labels must lie in 0..{MAX_CLASSES - 1}, got a largest of {n_cls - 1}")
        class_names = self.class_names or [str(i) for i in range(n_cls)]
        with StoreWriter(out_dir, "ntu25", 3, class_names=class_names, source=key,
                         prenormalize="3d" if self.normalize == "3d" else "none") as w:
            for part in ("train", "test"):
                idx, k = [], 0
                for block in iter_npz_rows(self.path, f"x_{part}", self.chunk):
                    if block.shape[-1] != 150:
                        raise ValueError(f"{self.path}: x_{part} rows have {block.shape[-1]} values,"
                                         f" expected 150 (2 persons x 25 joints x 3)")
                    for row in block:
                        x = row_to_sample(row)
                        if self.normalize == "3d":
                            x = pre_normalize_3d(x, "ntu25")
                        idx.append(w.add(f"{part}_{k:06d}", x, int(ys[part][k]), index=k))
                        k += 1
                if k != len(ys[part]):
                    raise ValueError(f"{self.path}: x_{part} has {k} rows, y_{part} {len(ys[part])}")
                w.set_split(self.benchmark, part, idx)
