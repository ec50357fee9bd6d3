"""NTU RGB+D 60 / 120: opens the store that ``python -m last_lite.prepare`` wrote.

Preprocessing the raw ``.skeleton`` files (56,880 / 114,480 of them) is a separate, parallel,
resumable command, so this source never builds anything: ``build()`` opens the processed store at
``root`` and checks that it holds the benchmark's split::

    python -m last_lite.prepare dataset=ntu60 raw_dir=/data/nturgb+d_skeletons out_dir=data/ntu60
    NTUSource("data/ntu60", benchmark="xsub").build(cache_dir)   # -> SkeletonStore

Benchmarks: ``xsub`` and ``xview`` (NTU-60 store), ``xsub120`` and ``xset`` (NTU-120 store); each
split has the parts ``train`` and ``test``. Layout ``ntu25``, labels 0..59 / 0..119, per-sample
fields setup, camera, subject (= performer), performer, replication, action.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from last_lite.data.ntu_skeleton import BENCHMARKS
from last_lite.data.sources import Source
from last_lite.data.store import SkeletonStore, StoreError


class NTUSource(Source):
    """The processed NTU store at ``root`` for one benchmark (xsub | xview | xsub120 | xset)."""

    name = "ntu"
    version = 1

    def __init__(self, root: str | os.PathLike = "data/ntu60", benchmark: str = "xsub") -> None:
        if benchmark not in BENCHMARKS:
            raise ValueError(f"unknown NTU benchmark {benchmark!r}; expected one of {sorted(BENCHMARKS)}")
        self.root = Path(root)
        self.benchmark = benchmark
        self.dataset = BENCHMARKS[benchmark]

    @property
    def split(self) -> str:
        """The split name inside the store (same as the benchmark)."""
        return self.benchmark

    def params(self) -> dict[str, Any]:
        return {"root": str(self.root), "benchmark": self.benchmark}

    def _hint(self) -> str:
        return (f"run `python -m last_lite.prepare dataset={self.dataset} "
                f"raw_dir=/path/to/skeletons out_dir={self.root}` first")

    def write(self, out_dir: Path, key: str) -> None:
        raise FileNotFoundError(f"no processed NTU store at {self.root}: {self._hint()}")

    def build(self, cache_dir: str | os.PathLike | None = None) -> SkeletonStore:
        """Open the store at ``root`` (``cache_dir`` is unused: the store lives where prepare put it)."""
        if not (self.root / "meta.json").is_file():
            raise FileNotFoundError(f"no processed NTU store at {self.root}: {self._hint()}")
        try:
            store = SkeletonStore(self.root)
        except StoreError as exc:
            raise StoreError(f"{exc}; rebuild it: {self._hint()}") from exc
        splits = store.splits
        if self.benchmark not in splits or not {"train", "test"} <= set(splits[self.benchmark]):
            raise StoreError(
                f"the store at {self.root} has no {self.benchmark!r} split (it has "
                f"{sorted(splits) or 'none'}); benchmark {self.benchmark!r} needs a "
                f"{self.dataset} store: {self._hint()}"
            )
        return store


__all__ = ["NTUSource"]
