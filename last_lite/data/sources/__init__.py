"""Data sources: each turns some raw format into a cached :class:`~last_lite.data.store.SkeletonStore`.

A source is a small object with ``build(cache_dir) -> SkeletonStore``: the store is written once
into ``cache_dir/<source key>/`` (the key hashes the source's parameters) and reused while it is
present and intact. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from importlib import import_module
from pathlib import Path
from typing import Any, Iterator

from last_lite.data.store import SkeletonStore, open_store_if_valid

_SOURCES = {
    "nw_ucla": ("nw_ucla", "NWUCLASource"),
    "synthetic": ("synthetic", "SyntheticSource"),
    "custom": ("custom", "CustomSource"),
    "pyskl": ("pyskl", "PYSKLSource"),
    "ctrgcn": ("ctrgcn", "CTRGCNSource"),
    "ntu": ("ntu", "NTUSource"),
}


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``, removed again on release (no lock where fcntl
    is missing, e.g. Windows). A waiter that wakes up on a lock file already removed retries."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed (or replaced) this file: take the new one
    try:
        yield
    finally:
        os.unlink(lock_path)
        os.close(fd)


class Source:
    """Base class: subclasses set ``name`` and ``version`` and implement ``params()`` and
    ``write(out_dir, key)`` (which must produce a store via ``StoreWriter(..., source=key)``)."""

    name = "source"
    version = 1

    def params(self) -> dict[str, Any]:
        raise NotImplementedError

    def key(self) -> str:
        blob = json.dumps({"v": self.version, **self.params()}, sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"

    def write(self, out_dir: Path, key: str) -> None:
        raise NotImplementedError

    def build(self, cache_dir: str | os.PathLike) -> SkeletonStore:
        key = self.key()
        out = Path(cache_dir) / key
        store = open_store_if_valid(out, source=key)
        if store is not None:
            return store
        # Processes started together (DDP ranks under torchrun or srun) build the store once:
        # the first takes the lock and writes, the others wait and then open its result.
        with _exclusive(Path(cache_dir) / f".{key}.lock"):
            store = open_store_if_valid(out, source=key)
            if store is None:
                self.write(out, key)
                store = SkeletonStore(out)
        return store

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params()})"


def get_source(name: str, **kwargs: Any) -> Source:
    """Instantiate a source by short name (``nw_ucla``, ``synthetic``, ``custom``, ``pyskl``,
    ``ctrgcn``, ``ntu``)."""
    if name not in _SOURCES:
        raise ValueError(f"unknown source {name!r}; known: {sorted(_SOURCES)}")
    module, cls = _SOURCES[name]
    return getattr(import_module(f"{__name__}.{module}"), cls)(**kwargs)


__all__ = ["Source", "get_source"]
