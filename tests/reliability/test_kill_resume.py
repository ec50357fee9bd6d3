"""Kill and resume: a run killed with SIGKILL in the middle of an epoch loses at most the work since
its last checkpoint, leaves only whole checkpoint files, and resumed from its epoch-end checkpoint
(in the same run folder) ends with the same weights and metrics as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from reliability_support import REPO, env_for_subprocess

from last_lite.training.checkpoints import load_checkpoint

# 16 classes x 8 training samples, 1 per class held out for validation: 112 samples, 7 steps of 16
TINY = ["model=last_lite_nano", "trainer.max_epochs=2", "data.source.train_per_class=8",
        "data.source.test_per_class=4", "data.clip_len=32", "data.batch_size=16",
        "trainer.log_every_n_steps=1", "sched.warmup_epochs=0"]
STEPS_PER_EPOCH, EVERY_N = 7, 3


def _cmd(overrides: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "last_lite.train", *overrides, f"hydra.run.dir={run_dir}"]


def _run(overrides: list[str], run_dir: Path) -> None:
    result = subprocess.run(_cmd(overrides, run_dir), cwd=REPO, env=env_for_subprocess(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


def _stray_files(run_dir: Path) -> list[str]:
    """Temp files anywhere in the run folder (a write that never finished)."""
    return [str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
            if p.is_file() and (".tmp" in p.name or p.name.startswith(".") and p.suffix != ".yaml")]


def test_sigkill_mid_epoch_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    steps = [f"callbacks.step_checkpoint.every_n_train_steps={EVERY_N}"]
    marker = tmp_path / "paused"
    # Start the uninterrupted run and the one to kill together (two cores, one thread each).
    proc = subprocess.Popen(
        _cmd([*TINY, *steps, "+callbacks.pause._target_=reliability_callbacks.PauseAt",
              f"+callbacks.pause.marker={marker}", "+callbacks.pause.epoch=1", "+callbacks.pause.batch=4"],
             killed), cwd=REPO, env=env_for_subprocess(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        _run(TINY, full)
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, f"the run ended before the pause:\n{proc.stdout.read()[-4000:]}"
            assert time.monotonic() < deadline, "the run never reached epoch 1, batch 4"
            time.sleep(0.2)
        epoch, batch, paused_step, pid = (int(v) for v in marker.read_text().split())
        assert (epoch, batch, pid) == (1, 4, proc.pid) and paused_step == STEPS_PER_EPOCH + 4
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    # What the kill left: whole checkpoints (weights_only loads), no temp files, no record yet.
    ckpts = killed / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["best.ckpt", "last.ckpt", "step.ckpt"]
    assert _stray_files(killed) == [] and not (killed / "metrics.json").exists()
    last = load_checkpoint(ckpts / "last.ckpt")
    assert last["epoch"] == 0 and last["global_step"] == STEPS_PER_EPOCH  # written at epoch end
    step = load_checkpoint(ckpts / "step.ckpt")
    assert step["global_step"] % EVERY_N == 0 and 0 <= paused_step - step["global_step"] < EVERY_N
    assert step["global_step"] > last["global_step"]  # the newest work is in the step checkpoint

    # Resume from the epoch-end checkpoint, in the same run folder (best-checkpoint tracking goes on).
    _run([*TINY, *steps, f"ckpt_path={ckpts / 'last.ckpt'}"], killed)
    want = load_checkpoint(full / "checkpoints" / "last.ckpt")
    got = load_checkpoint(ckpts / "last.ckpt")
    assert got["global_step"] == want["global_step"] == 2 * STEPS_PER_EPOCH
    assert want["state_dict"].keys() == got["state_dict"].keys()
    for key, value in want["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (full, killed))
    for key in ("top1", "top5", "best_val_top1", "per_class_accuracy", "confusion_matrix", "epochs"):
        assert a[key] == b[key], key
    # a tiny hold-out: selection=auto hands on the last (EMA) weights
    assert Path(a["checkpoint"]).name == Path(b["checkpoint"]).name == "last.ckpt"
    assert _stray_files(killed) == []
