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


def _npz_rows(path: str | Path, key: str, chunk: int) -> Iterator[np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        member = f"{key}.npy"
        if member not in zf.namelist():
            raise KeyError(f"{path}: no array {key!r} (has {sorted(zf.namelist())})")
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype.hasobject:
                raise ValueError(f"{path}:{key} holds Python objects; refusing (allow_pickle=False)")
            if not shape:
                raise ValueError(f"{path}:{key} is a scalar, expected rows")
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if declared > zf.getinfo(member).file_size - f.tell():
                raise ValueError(f"{path}:{key} declares shape {shape} but holds fewer bytes "
                                 "(truncated or corrupt)")
            if fortran:
                arr = np.load(path, allow_pickle=False)[key]
                for s in range(0, len(arr), chunk):
                    yield np.ascontiguousarray(arr[s:s + chunk])
                return
            row = int(np.prod(shape[1:])) * dtype.itemsize
            for s in range(0, shape[0], chunk):
                n = min(chunk, shape[0] - s)
                buf = f.read(n * row)
                if len(buf) != n * row:
                    raise ValueError(f"{path}:{key} is truncated")
                yield np.frombuffer(buf, dtype=dtype).reshape((n,) + tuple(shape[1:]))


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
        return {"path": str(self.path.resolve()), "size": st.st_size, "mtime": int(st.st_mtime),
                "benchmark": self.benchmark, "normalize": self.normalize,
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

    def _write(self, out_dir: Path, key: str) -> None:
        ys = {}
        for part in ("train", "test"):  # streamed like x: a corrupt header cannot ask for memory
            blocks = list(iter_npz_rows(self.path, f"y_{part}", self.chunk))
            y = np.concatenate(blocks) if blocks else np.zeros(0)
            ys[part] = y.argmax(1) if y.ndim == 2 else y.astype(np.int64)
        n_cls = int(max(y.max() for y in ys.values())) + 1
        if not 0 < n_cls <= MAX_CLASSES:
            raise ValueError(f"labels must lie in 0..{MAX_CLASSES - 1}, got a largest of {n_cls - 1}")
        class_names = self.class_names or [str(i) for i in range(n_cls)]
        with StoreWriter(out_dir, "ntu25", 3, class_names=class_names, source=key) as w:
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
