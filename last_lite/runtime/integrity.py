"""A SHA-256 of an exported ``.onnx`` file, stored inside the file (standard library only).

Export writes the metadata entry ``integrity`` = ``last_lite.sha256=<64 hex>``; the hash is the
SHA-256 of the whole file with those 64 hex characters set to ``0``. The value has a fixed length,
so the hash is written into the saved file in place (:func:`stamp`) without changing the
protobuf. The runtime recomputes it before ONNX Runtime sees the bytes (:func:`verify`): a file
damaged anywhere (weights, graph, metadata) is refused instead of predicting wrongly.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

KEY = "integrity"
PREFIX = b"last_lite.sha256="
PLACEHOLDER = (PREFIX + b"0" * 64).decode()
_FIELD = re.compile(re.escape(PREFIX) + rb"([0-9a-f]{64})")

__all__ = ["IntegrityError", "KEY", "PLACEHOLDER", "stamp", "verify"]


class IntegrityError(ValueError):
    """The file's bytes do not match the SHA-256 it carries."""


def _digest(data: bytes, start: int) -> str:
    zeroed = data[:start] + b"0" * 64 + data[start + 64:]
    return hashlib.sha256(zeroed).hexdigest()


def stamp(path: str | os.PathLike) -> str:
    """Write the file's hash into its ``integrity`` field (which must occur exactly once)."""
    path = Path(path)
    data = path.read_bytes()
    found = list(_FIELD.finditer(data))
    if len(found) != 1:
        raise IntegrityError(f"{path}: expected one integrity field, found {len(found)}")
    start = found[0].start(1)
    digest = _digest(data, start)
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(digest.encode())
    return digest


def verify(data: bytes, name: str) -> bool | None:
    """True when ``data`` matches the hash it carries, None when it carries none (a file exported
    before the field existed); raises :class:`IntegrityError` on a mismatch or several fields."""
    found = list(_FIELD.finditer(data))
    if not found:
        return None
    if len(found) > 1:
        raise IntegrityError(f"{name}: {len(found)} integrity fields; the file is damaged")
    start = found[0].start(1)
    if _digest(data, start) != found[0].group(1).decode():
        raise IntegrityError(f"{name} is damaged: its bytes do not match the SHA-256 it was exported "
                             f"with; export it again or copy it again")
    return True
