"""Bounded readers for what the edge runtime is given (numpy + standard library only).

One reader per input kind, each bounded by what the model can use before anything is allocated:

- the model file (:func:`read_model_bytes`): a regular file (not a FIFO or a folder), at most
  :data:`MAX_MODEL_BYTES`, its SHA-256 checked (:mod:`last_lite.runtime.integrity`);
- JSON lines (:func:`frames_from_json_lines`): each line at most ``max_line_bytes`` (from the
  model's persons, joints and channels), parsed and checked; a bad line is reported through
  ``report(line_number, reason)`` and skipped, the stream goes on;
- ``.npy`` (:func:`read_npy_recording`): the header is checked (dtype, shape, joints, channels,
  persons, frames) before the data is mapped, not read;
- a whole-file JSON document ``{"skeletons": [T][V][C]}`` (:func:`read_skeletons_document`; the
  NW-UCLA ``all_sqe`` release, CTR-GCN's format): at most :data:`MAX_DOCUMENT_BYTES`.

Every refusal is an :class:`InputError` (a ``ValueError``) or, for the model, a
:class:`ModelFileError`; nothing else escapes.
"""

from __future__ import annotations

import ast
import json
import math
import numbers
import os
import stat
import struct
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

import numpy as np

__all__ = ["InputError", "MAX_COORD", "MAX_DOCUMENT_BYTES", "MAX_FRAMES", "MAX_MODEL_BYTES",
           "ModelFileError", "clean_frame", "frames_from_json_lines", "read_model_bytes",
           "read_npy_recording", "read_npy_shape", "read_skeletons_document"]

MAX_MODEL_BYTES = 2 << 30   # protobuf's own limit
MAX_FRAMES = 1 << 20        # frames in one .npy recording (~10 h at 30 fps)
MAX_DOCUMENT_BYTES = 64 << 20  # one JSON document read whole (NW-UCLA's largest clip: 127 KB)
MAX_COORD = 1e6             # |coordinate| above this is not a skeleton (and overflows float32 maths)
_NUMBER_CHARS = 24          # generous characters per number in a JSON frame


class InputError(ValueError):
    """An input (frame, line, file) the runtime refuses; the message says which and why."""


class ModelFileError(ValueError):
    """The model file is missing, unreadable, damaged or not a last_lite export."""


# ------------------------------------------------------------------------------------------------
# the model file
# ------------------------------------------------------------------------------------------------
def _regular_file(path: Path, what: str, error: type[ValueError]) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file")
    return st


def read_model_bytes(path: str | os.PathLike) -> tuple[bytes, bool | None]:
    """(the file's bytes, whether its SHA-256 was checked: None when it carries none)."""
    from last_lite.runtime.integrity import IntegrityError, verify

    path = Path(path)
    st = _regular_file(path, "model file", ModelFileError)
    if st.st_size == 0:
        raise ModelFileError(f"model file {path} is empty")
    if st.st_size > MAX_MODEL_BYTES:
        raise ModelFileError(f"model file {path} is {st.st_size} bytes, more than an ONNX model can be")
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_MODEL_BYTES + 1)
    except OSError as exc:
        raise ModelFileError(f"model file {path} cannot be read: {exc.strerror or exc}") from None
    try:
        checked = verify(data, str(path))
    except IntegrityError as exc:
        raise ModelFileError(str(exc)) from None
    return data, checked


# ------------------------------------------------------------------------------------------------
# frames
# ------------------------------------------------------------------------------------------------
def _finite_array(arr: np.ndarray, what: str) -> np.ndarray:
    """float32 copy with non-finite joints absent (zeros, the store's convention for a missing
    joint); coordinates beyond :data:`MAX_COORD` are refused."""
    with warnings.catch_warnings():  # e.g. a complex-free cast of odd dtypes: checked below
        warnings.simplefilter("ignore")
        arr = np.array(arr, dtype=np.float64, copy=True)
    bad = ~np.isfinite(arr)
    if bad.any():
        arr[bad.any(axis=-1)] = 0.0  # a joint with any NaN/inf value is an absent joint
    if arr.size and float(np.abs(arr).max()) > MAX_COORD:
        raise InputError(f"{what}: a coordinate exceeds {MAX_COORD:g} in magnitude")
    return arr.astype(np.float32)


def _number(value: Any) -> float:
    # numpy scalars count (a frame built from arrays holds float32s); booleans are no coordinates
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.integer, np.floating)):
        raise InputError(f"a joint value must be a number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _listed(value: Any, what: str, most: int) -> Any:
    """An ndarray (a person or a joint) as nested lists, so that it meets the checks a list meets:
    ``tolist()`` gives Python numbers (np.bool_ becomes bool, still refused; None in an object
    array stays an absent joint). One of more than ``most`` values is refused before it is copied."""
    if not isinstance(value, np.ndarray):
        return value
    if value.size > most:
        raise InputError(f"{what} holds {value.size} values (shape {value.shape}), more than the model's {most}")
    return value.tolist()


def clean_frame(frame: Any, num_joints: int, channels: int, max_persons: int) -> np.ndarray:
    """One frame as (persons, V, C) float32, persons capped at ``max_persons`` (the model uses
    the first ``max_persons``; the rest is never read). Accepts an array (M, V, C) or (V, C), a
    list of persons (each V joints of C numbers, Python or numpy ones, as lists or arrays;
    ``null`` = absent joint or person), a mapping
    ``{"persons": [...]}``, or None / [] (nobody). Raises :class:`InputError` for anything else."""
    if isinstance(frame, Mapping):
        if "persons" not in frame:
            raise InputError(f"a frame mapping needs a 'persons' key, got keys {sorted(map(str, frame))[:10]}")
        frame = frame["persons"]
    if frame is None:
        return np.zeros((0, num_joints, channels), np.float32)
    if isinstance(frame, np.ndarray):
        if frame.dtype.kind not in "biuf":
            raise InputError(f"a frame array must be numeric, got dtype {frame.dtype}")
        arr = frame[None] if frame.ndim == 2 else frame
        if arr.ndim != 3 or arr.shape[1:] != (num_joints, channels):
            raise InputError(f"a frame must be (persons, {num_joints}, {channels}) or ({num_joints}, "
                             f"{channels}), got {frame.shape}")
        return _finite_array(arr[:max_persons], "frame")
    if not isinstance(frame, (list, tuple)):
        raise InputError(f"a frame must be a list of persons, got {type(frame).__name__}")
    out = np.zeros((min(len(frame), max_persons), num_joints, channels), np.float64)
    for p, person in enumerate(frame[:max_persons]):
        if person is None:
            continue
        person = _listed(person, f"person {p}", num_joints * channels)
        if not isinstance(person, (list, tuple)):
            raise InputError(f"person {p} must be a list of joints or null, got {type(person).__name__}")
        if len(person) != num_joints:
            raise InputError(f"person {p} has {len(person)} joints, the model's layout has {num_joints}")
        for j, joint in enumerate(person):
            joint = _listed(joint, f"person {p} joint {j}", channels)
            if joint is None:
                continue
            if not isinstance(joint, (list, tuple)):
                raise InputError(f"person {p} joint {j} must be a list of numbers or null, "
                                 f"got {type(joint).__name__}")
            if len(joint) != channels:
                raise InputError(f"person {p} joint {j} has {len(joint)} values, the model expects {channels}")
            out[p, j] = [_number(v) for v in joint]
    return _finite_array(out, "frame")


def max_line_bytes(num_joints: int, channels: int, max_persons: int) -> int:
    """The longest JSON line worth reading: every person the model uses, with room to spare for
    absent persons, blanks and long numbers."""
    return 4096 + 4 * max_persons * num_joints * (channels * _NUMBER_CHARS + 8)


def _lines(stream: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per line; None for a line longer than ``limit`` (its rest skipped)."""
    n = 0
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        n += 1
        if len(line) > limit and not line.endswith(b"\n"):
            while True:  # skip the rest of the over-long line, a bounded chunk at a time
                rest = stream.readline(1 << 16)
                if not rest or rest.endswith(b"\n"):
                    break
            yield n, None
            continue
        yield n, line


def frames_from_json_lines(stream: BinaryIO, num_joints: int, channels: int, max_persons: int,
                           report: Callable[[int, str], None] | None = None) -> Iterator[np.ndarray]:
    """Frames (persons, V, C) from a binary stream of JSON lines. Blank lines and ``#`` comments
    are skipped; a line that is too long, not UTF-8, not JSON or not a frame is passed to
    ``report(line_number, reason)`` and skipped."""
    limit = max_line_bytes(num_joints, channels, max_persons)
    for n, raw in _lines(stream, limit):
        if raw is None:
            if report:
                report(n, f"longer than {limit} bytes (more than the model's {max_persons} persons "
                          f"of {num_joints} joints can need)")
            continue
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            if report:
                report(n, "not UTF-8 text")
            continue
        if not text or text.startswith("#"):
            continue
        try:
            obj = json.loads(text)
            frame = clean_frame(obj, num_joints, channels, max_persons)
        except InputError as exc:
            if report:
                report(n, str(exc))
            continue
        except (ValueError, RecursionError, MemoryError) as exc:  # JSON errors, huge integers, deep nesting
            if report:
                report(n, f"not JSON ({type(exc).__name__}: {str(exc)[:120]})")
            continue
        yield frame


# ------------------------------------------------------------------------------------------------
# .npy
# ------------------------------------------------------------------------------------------------
def _npy_header(fh: BinaryIO, path: Path, size: int) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    head = fh.read(10)
    if len(head) < 10 or head[:6] != b"\x93NUMPY":
        raise InputError(f"{path} is not a .npy file")
    major = head[6]
    if major == 1:
        length = struct.unpack("<H", head[8:10])[0]
        offset = 10
    elif major in (2, 3):
        more = fh.read(2)
        if len(more) < 2:
            raise InputError(f"{path}: truncated .npy header")
        length = struct.unpack("<I", head[8:10] + more)[0]
        offset = 12
    else:
        raise InputError(f"{path}: unknown .npy version {major}")
    if length > 1 << 16 or offset + length > size:
        raise InputError(f"{path}: .npy header length {length} is corrupt")
    raw = fh.read(length)
    try:
        header = ast.literal_eval(raw.decode("latin1"))
        descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
        dtype = np.dtype(descr)
    except Exception as exc:  # a damaged header: any parse error is the file's fault
        raise InputError(f"{path}: unreadable .npy header ({type(exc).__name__})") from None
    if not isinstance(fortran, bool) or not isinstance(shape, tuple) \
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InputError(f"{path}: unreadable .npy header")
    return dtype, shape, fortran, offset + length


def read_npy_recording(path: str | os.PathLike, num_joints: int, channels: int,
                       max_persons: int, max_frames: int = MAX_FRAMES) -> np.ndarray:
    """A ``.npy`` recording (T, V, C) or (M, T, V, C) as (M', T, V, C) float32 (M' <= max_persons,
    non-finite joints absent). The header is checked (a numeric dtype, the model's joints and
    channels, at most ``max_frames`` frames, data present in full) before the data is mapped."""
    path = Path(path)
    st = _regular_file(path, "input file", InputError)
    try:
        with open(path, "rb") as fh:
            dtype, shape, fortran, data_offset = _npy_header(fh, path, st.st_size)
    except OSError as exc:
        raise InputError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if dtype.kind not in "biuf" or dtype.hasobject or dtype.itemsize > 16:
        raise InputError(f"{path}: dtype {dtype} is not numeric")
    if len(shape) not in (3, 4):
        raise InputError(f"{path}: keypoints must be (T, V, C) or (M, T, V, C), got shape {shape}")
    full = (1, *shape) if len(shape) == 3 else shape
    m, t, v, c = full
    if (v, c) != (num_joints, channels):
        raise InputError(f"{path}: keypoints have {v} joints of {c} values, the model expects "
                         f"{num_joints} of {channels}")
    if t > max_frames:
        raise InputError(f"{path}: {t} frames, more than {max_frames}")
    if m > 1 << 16:
        raise InputError(f"{path}: {m} persons")
    if data_offset + m * t * v * c * dtype.itemsize > st.st_size:
        raise InputError(f"{path}: the file is shorter than its header declares (truncated)")
    try:
        arr = np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=shape,
                        order="F" if fortran else "C") if m * t * v * c else np.zeros(shape, dtype)
        arr = arr.reshape(full)[:max_persons]
        return _finite_array(arr, str(path))
    except (OSError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None


def read_npy_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape a ``.npy`` file's header declares (the header alone is read, checked as in
    :func:`read_npy_recording`); used to tell the input's layout from its joint count."""
    path = Path(path)
    st = _regular_file(path, "input file", InputError)
    try:
        with open(path, "rb") as fh:
            return _npy_header(fh, path, st.st_size)[1]
    except OSError as exc:
        raise InputError(f"{path} cannot be read: {exc.strerror or exc}") from None


def read_skeletons_document(path: str | os.PathLike, num_joints: int | None = None,
                            channels: int | None = None) -> np.ndarray | None:
    """A whole-file JSON document ``{"skeletons": [T][V][C], ...}`` (NW-UCLA's ``all_sqe`` files,
    CTR-GCN's format; other keys such as ``label`` ignored) as (1, T, V, C) float32 with non-finite
    joints absent, or None when the file is not one such document (JSON lines, or over
    :data:`MAX_DOCUMENT_BYTES`: left to the streaming reader). ``num_joints`` / ``channels``, when
    given, must match."""
    path = Path(path)
    st = _regular_file(path, "input file", InputError)
    if st.st_size > MAX_DOCUMENT_BYTES:
        return None
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read(st.st_size))  # read(n) allocates n bytes up front: the file's size
    except OSError as exc:
        raise InputError(f"{path} cannot be read: {exc.strerror or exc}") from None
    except (ValueError, RecursionError):  # several documents (JSON lines) or not JSON at all
        return None
    if not isinstance(doc, dict) or "skeletons" not in doc:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an overflowing number becomes inf: an absent joint below
            skeletons = np.asarray(doc["skeletons"], dtype=np.float64)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f'{path}: "skeletons" must be [T][V][C] numbers ({type(exc).__name__})') from None
    if skeletons.ndim == 2:  # a single frame stored without its frame axis, as NW-UCLA has
        skeletons = skeletons[None]
    if skeletons.ndim != 3:
        raise InputError(f'{path}: "skeletons" must be [T][V][C], got shape {skeletons.shape}')
    t, v, c = skeletons.shape
    if num_joints is not None and (v, c) != (num_joints, channels):
        raise InputError(f"{path}: {v} joints of {c} values, the model expects {num_joints} of {channels}")
    if t > MAX_FRAMES:
        raise InputError(f"{path}: {t} frames, more than {MAX_FRAMES}")
    return _finite_array(skeletons[None], str(path))
