"""Shared helpers: run a command through its real Hydra entry point on a tiny synthetic set."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# A small slice of the embedded synthetic set: a run takes seconds, not minutes.
TINY_DATA = ["data.source.train_per_class=8", "data.source.test_per_class=4", "data.clip_len=32",
             "data.batch_size=16", "trainer.log_every_n_steps=1", "sched.warmup_epochs=0"]


def run_command(module: str, overrides: list[str], run_dir: Path, check: bool = True,
                timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m last_lite.<module> <overrides> hydra.run.dir=<run_dir>`` in a subprocess."""
    # One intra-op thread: these clips are tiny, and threads only fight over the two cores.
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", f"last_lite.{module}", *overrides, f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Tiny tensors: one intra-op thread (here and in the commands run) avoids thread-sync stalls
    on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_teacher_run(tmp_path_factory) -> Path:
    """A last_e_v3_nano trained briefly with Path A: the teacher of the distillation tests."""
    run_dir = tmp_path_factory.mktemp("teacher")
    run_command("train", ["model=last_e_v3_nano", "trainer.max_epochs=2", *TINY_DATA], run_dir)
    return run_dir


def data_group(name: str):
    """``conf/data/<name>.yaml`` as the commands see it (its defaults list merged in, e.g. the
    shared keys of ``_base.yaml``), unresolved: interpolations like ``${paths.cache_dir}`` stay."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=[f"data={name}"]).data
