"""Helpers of the reliability suite (no test here): bounded reader calls, a slow data source and
small tree utilities. Imported by the tests and, through ``PYTHONPATH``, by the subprocesses they
start (so numpy only at import time)."""

from __future__ import annotations

import os
import signal
import sys
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


class ReaderHang(Exception):
    """A reader ran past its time limit (raised from SIGALRM)."""


@contextmanager
def time_limit(seconds: float):
    """Raise ReaderHang in the main thread if the block runs longer than ``seconds``."""

    def on_alarm(signum, frame):
        raise ReaderHang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def bounded_call(fn: Callable[..., Any], *args: Any, seconds: float = 10.0, **kwargs: Any):
    """Call ``fn``; returns (result or None, exception or None, peak bytes allocated during it).

    tracemalloc must be running (numpy reports its buffers to it). A hang fails loudly:
    ReaderHang is never returned as an ordinary exception.
    """
    assert tracemalloc.is_tracing(), "start tracemalloc first"
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    result = error = None
    with time_limit(seconds):
        try:
            result = fn(*args, **kwargs)
        except ReaderHang:
            raise
        except Exception as exc:  # noqa: BLE001 -- classified by the caller
            error = exc
    peak = tracemalloc.get_traced_memory()[1] - base
    return result, error, peak


def env_for_subprocess(**extra: str) -> dict[str, str]:
    """Environment for a child ``python -m last_lite...``: one thread, helpers importable."""
    path = os.pathsep.join([str(HERE), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1",
            "PYTHONHASHSEED": "0", "PYTHONPATH": path, **extra}


# ------------------------------------------------------------------------------------------------
# a data source that takes its time, to test concurrent builds of one cached store

def _slow_source_class():
    from last_lite.data.sources import Source
    from last_lite.data.store import StoreWriter

    class SlowSource(Source):
        """Writes a tiny store after ``delay`` seconds and logs every write to ``log``."""

        name = "slow"
        version = 1

        def __init__(self, log: str, delay: float = 1.0) -> None:
            self.log, self.delay = log, float(delay)

        def params(self) -> dict:
            return {"fixed": 1}

        def write(self, out_dir: Path, key: str) -> None:
            with open(self.log, "a") as fh:
                fh.write(f"write {os.getpid()}\n")
            time.sleep(self.delay)
            rng = np.random.default_rng(0)
            with StoreWriter(out_dir, "ntu25", 3, class_names=["a", "b"], source=key) as w:
                for i in range(4):
                    w.add(f"s{i}", rng.normal(size=(1, 5, 25, 3)), i % 2)
                w.set_split("all", "train", range(4))

    return SlowSource


def build_slow_store(cache: str, log: str) -> None:
    """Entry of the concurrent-build test's child processes."""
    store = _slow_source_class()(log).build(cache)
    assert len(store) == 4 and store.get(3).shape == (1, 5, 25, 3)
    print("ok", len(store))


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "build":
    build_slow_store(sys.argv[2], sys.argv[3])
